//! What a column holds, in the words of a data-protection policy: a [`Kind`] of value (email,
//! IBAN, card PAN...) and the [`Tag`] that decides who may see it raw.
//!
//! ```
//! use sealtrail_core::class::{Kind, Tag};
//! let k: Kind = "card_pan".parse().unwrap();
//! assert_eq!(k.default_tag(), Tag::Financial);
//! assert_eq!("pii".parse::<Tag>().unwrap(), Tag::Pii);
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Sensitivity class of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tag {
    /// Not sensitive.
    None,
    /// The firm's own confidential data (counterparties, strategies).
    Proprietary,
    /// Payment and account data (PCI DSS, banking secrecy).
    Financial,
    /// Personal data (GDPR, GLBA).
    Pii,
}

/// The kind of value a column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Email,
    Phone,
    PersonName,
    PostalAddress,
    DateOfBirth,
    /// National identifier: US SSN, UK National Insurance number.
    NationalId,
    Iban,
    CardPan,
    AccountNumber,
    Isin,
    Lei,
    Bic,
    IpAddress,
    /// Free text that contains any of the sensitive kinds above.
    FreeText,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Email,
        Kind::Phone,
        Kind::PersonName,
        Kind::PostalAddress,
        Kind::DateOfBirth,
        Kind::NationalId,
        Kind::Iban,
        Kind::CardPan,
        Kind::AccountNumber,
        Kind::Isin,
        Kind::Lei,
        Kind::Bic,
        Kind::IpAddress,
        Kind::FreeText,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::PersonName => "person_name",
            Kind::PostalAddress => "postal_address",
            Kind::DateOfBirth => "date_of_birth",
            Kind::NationalId => "national_id",
            Kind::Iban => "iban",
            Kind::CardPan => "card_pan",
            Kind::AccountNumber => "account_number",
            Kind::Isin => "isin",
            Kind::Lei => "lei",
            Kind::Bic => "bic",
            Kind::IpAddress => "ip_address",
            Kind::FreeText => "free_text",
        }
    }

    /// The tag a column of this kind gets unless the spec says otherwise. ISINs and BICs are
    /// public reference data; an LEI names a counterparty, which is the firm's business.
    pub fn default_tag(self) -> Tag {
        match self {
            Kind::Email
            | Kind::Phone
            | Kind::PersonName
            | Kind::PostalAddress
            | Kind::DateOfBirth
            | Kind::NationalId
            | Kind::IpAddress
            | Kind::FreeText => Tag::Pii,
            Kind::Iban | Kind::CardPan | Kind::AccountNumber => Tag::Financial,
            Kind::Lei => Tag::Proprietary,
            Kind::Isin | Kind::Bic => Tag::None,
        }
    }
}

impl Tag {
    pub fn name(self) -> &'static str {
        match self {
            Tag::None => "none",
            Tag::Proprietary => "proprietary",
            Tag::Financial => "financial",
            Tag::Pii => "pii",
        }
    }
    pub fn is_sensitive(self) -> bool {
        self != Tag::None
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown kind `{s}`; one of: {}",
                    Kind::ALL.map(Kind::name).join(", ")
                )
            })
    }
}

impl FromStr for Tag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Tag::None, Tag::Proprietary, Tag::Financial, Tag::Pii]
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown tag `{s}`; one of: pii, financial, proprietary, none"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(k.name().parse::<Kind>().unwrap(), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
        }
        assert!("cardpan".parse::<Kind>().unwrap_err().contains("card_pan"));
    }
}
