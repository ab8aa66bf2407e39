//! Card data: validated on the way in, and kept where it cannot leak on the way out.
//!
//! The full number and the CVC exist only inside [`Card`], for as long as one request needs
//! them to reach the provider. Neither type here implements `Display`, `Serialize` or a
//! revealing `Debug`: a `tracing::debug!(?card)` or an error message built with `{:?}` shows the
//! brand, the last four digits and the expiry, with the CVC masked, and nothing else. What is
//! stored, logged, published and returned is a [`CardSummary`].
//!
//! Why types and not discipline: a rule such as "never log the card" is broken by the first
//! `?request` in a log line written under pressure. With these types the compiler and the
//! `Debug` impls enforce it, and `no_full_card_number_in_the_database_the_events_or_the_logs`
//! in `tests/card_data.rs` checks the result end to end (the real binary at debug level, every
//! table, every event, every log line).
//!
//! Validation happens here, before any provider call, so a typo is a field-level 422 /
//! `INVALID_ARGUMENT` naming `card.number`, `card.expiry` or `card.cvc`, and never a decline
//! that would cost a provider round trip and read like the bank's decision.
//!
//! Where it sits: [`crate::grpc`] parses the Authorize request's card into a [`Card`] and
//! drops the request; [`crate::payments`] stores the [`CardSummary`] on the payment and moves
//! the [`Card`] into the attempt; only [`crate::provider`] reads the digits. order-service
//! checks the same number and format first (for a quick 422 to the customer), but this is
//! the check that counts, since payment-service trusts no caller's validation. This is
//! pattern SEC-20 (data minimization) of `docs/patterns.md`.

use std::fmt;

use chrono::{Datelike, NaiveDate};
use shop_runtime::FieldError;

/// A validated card, as the provider needs it.
///
/// It can only be built by [`Card::parse`], so holding one proves the three fields were
/// checked. [`crate::payments::Payments::authorize`] summarises it before anything is stored
/// and moves it into the attempt that calls the provider; it is dropped when that attempt
/// ends and is never written anywhere.
pub struct Card {
    /// The full number; leaves this type only through [`Card::number`].
    number: CardNumber,
    /// Not secret, but only the provider needs it.
    expiry: Expiry,
    /// Never stored, never printed.
    cvc: Cvc,
}

/// Shows only what the fields' own `Debug` impls reveal: brand, last four, expiry, and a
/// masked CVC.
impl fmt::Debug for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Card")
            .field("number", &self.number)
            .field("expiry", &self.expiry)
            .field("cvc", &self.cvc)
            .finish()
    }
}

impl Card {
    /// Validates the three fields together and reports every problem, each naming its field
    /// (`card.number`, `card.expiry`, `card.cvc`). Messages never quote what was sent.
    ///
    /// `today` comes from the caller (the gRPC handler passes the current UTC date), so the
    /// expiry rule is a pure function the tests can pin to a date. The CVC's length depends
    /// on the brand, so a bad number also makes the CVC be checked as a three-digit one.
    pub fn parse(
        number: &str,
        expiry: &str,
        cvc: &str,
        today: NaiveDate,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let number = CardNumber::parse(number)
            .map_err(|message| errors.push(FieldError::new("card.number", message)))
            .ok();
        let expiry = Expiry::parse(expiry, today)
            .map_err(|message| errors.push(FieldError::new("card.expiry", message)))
            .ok();
        let brand = number.as_ref().map_or(Brand::Unknown, CardNumber::brand);
        let cvc = Cvc::parse(cvc, brand)
            .map_err(|message| errors.push(FieldError::new("card.cvc", message)))
            .ok();
        match (number, expiry, cvc) {
            (Some(number), Some(expiry), Some(cvc)) => Ok(Self {
                number,
                expiry,
                cvc,
            }),
            _ => Err(errors),
        }
    }

    /// The number, for the provider call only; everything else uses [`Card::summary`].
    pub fn number(&self) -> &CardNumber {
        &self.number
    }

    /// The expiry, for the provider call (it is not secret, but nothing else needs it).
    pub fn expiry(&self) -> Expiry {
        self.expiry
    }

    /// The CVC, for the provider call only.
    pub fn cvc(&self) -> &Cvc {
        &self.cvc
    }

    /// Brand and last four digits: all that is stored, logged or answered about a card, so
    /// the full number and the CVC never leave the provider call (PCI DSS scope stays small).
    pub fn summary(&self) -> CardSummary {
        CardSummary {
            brand: self.number.brand(),
            last4: self.number.last4().to_owned(),
        }
    }
}

/// What may be known about a card outside the provider call.
///
/// Stored on the payment, published in `PaymentAuthorized` and `PaymentFailed`, returned by
/// Authorize and shown by the HTTP API: everywhere a card appears outside the provider call,
/// this is what appears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSummary {
    /// The network, stored as `payments.card_brand`.
    pub brand: Brand,
    /// The last four digits, stored as `payments.card_last4`.
    pub last4: String,
}

/// The card network, from the number's leading digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brand {
    /// Numbers starting with 4.
    Visa,
    /// 51 to 55, and 2221 to 2720.
    Mastercard,
    /// 34 and 37; the only brand with a four-digit CVC.
    Amex,
    /// 6011 and 65.
    Discover,
    /// Any other valid number: accepted here, left to the provider to decide on.
    Unknown,
}

impl Brand {
    /// The name stored in `payments.card_brand` and shown to the customer.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Visa => "visa",
            Self::Mastercard => "mastercard",
            Self::Amex => "amex",
            Self::Discover => "discover",
            Self::Unknown => "unknown",
        }
    }

    /// The inverse of [`Brand::as_str`], for rows read back; a name it does not know is
    /// `Unknown` rather than an error, so a brand added later cannot make old rows unreadable.
    pub fn parse(name: &str) -> Self {
        match name {
            "visa" => Self::Visa,
            "mastercard" => Self::Mastercard,
            "amex" => Self::Amex,
            "discover" => Self::Discover,
            _ => Self::Unknown,
        }
    }
}

/// A primary account number that passed the Luhn check: 12 to 19 digits, spaces and dashes
/// removed.
pub struct CardNumber(String);

/// `CardNumber(visa ****4242)`: enough to tell two cards apart in a log, not to use one.
impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CardNumber({} ****{})",
            self.brand().as_str(),
            self.last4()
        )
    }
}

impl CardNumber {
    /// Checks the number locally (digits, length, Luhn), so a typo is a field error in the
    /// answer instead of a provider call that is certain to be refused. The error is the
    /// field's message, without the number.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let digits: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if digits.is_empty() {
            return Err("is required");
        }
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err("must contain digits only");
        }
        if !(12..=19).contains(&digits.len()) {
            return Err("must have 12 to 19 digits");
        }
        if !luhn(&digits) {
            return Err("is not a valid card number (Luhn check failed)");
        }
        Ok(Self(digits))
    }

    /// The digits, for the provider call only. Deliberately not `Display`.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The last four digits, which may be stored and shown (the number has at least 12).
    pub fn last4(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }

    /// The network, by its issuer identification prefixes: it decides the CVC's length and is
    /// stored with the payment (`payments.card_brand`).
    pub fn brand(&self) -> Brand {
        let prefix = |n: usize| self.0[..n].parse::<u32>().unwrap_or(0);
        match (prefix(1), prefix(2), prefix(4)) {
            (4, _, _) => Brand::Visa,
            (_, 34 | 37, _) => Brand::Amex,
            (_, 51..=55, _) | (_, _, 2221..=2720) => Brand::Mastercard,
            (_, 65, _) | (_, _, 6011) => Brand::Discover,
            _ => Brand::Unknown,
        }
    }
}

/// The Luhn (mod 10) checksum every card number carries in its last digit.
fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `MM/YY`; a card is valid through the last day of its expiry month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// 1 to 12.
    pub month: u32,
    /// The full year (`YY` read as `20YY`).
    pub year: i32,
}

impl Expiry {
    /// `MM/YY`, not in the past. `today` is a parameter so the rule is tested without a clock;
    /// a card is valid through the last day of its expiry month.
    pub fn parse(raw: &str, today: NaiveDate) -> Result<Self, &'static str> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("is required");
        }
        let parsed = raw.split_once('/').and_then(|(mm, yy)| {
            let well_formed = mm.len() == 2
                && yy.len() == 2
                && mm.bytes().chain(yy.bytes()).all(|b| b.is_ascii_digit());
            well_formed
                .then(|| Some((mm.parse::<u32>().ok()?, yy.parse::<i32>().ok()?)))
                .flatten()
        });
        let Some((month, yy)) = parsed else {
            return Err("must be MM/YY");
        };
        if !(1..=12).contains(&month) {
            return Err("has a month outside 01-12");
        }
        let expiry = Self {
            month,
            year: 2000 + yy,
        };
        if (expiry.year, expiry.month) < (today.year(), today.month()) {
            return Err("is in the past (the card has expired)");
        }
        Ok(expiry)
    }
}

/// The card verification code: 3 digits, 4 for American Express.
///
/// Never stored anywhere, not even summarised: card schemes forbid keeping it after the
/// authorization, and this service has no use for it after the provider call.
pub struct Cvc(String);

/// Always `Cvc(***)`: not even the length shows.
impl fmt::Debug for Cvc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvc(***)")
    }
}

impl Cvc {
    /// Three digits, four for American Express, so the length needs the brand; checked here for
    /// a precise field error rather than a provider decline.
    pub fn parse(raw: &str, brand: Brand) -> Result<Self, &'static str> {
        let expected = if brand == Brand::Amex { 4 } else { 3 };
        if raw.is_empty() {
            return Err("is required");
        }
        if raw.len() != expected || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(if expected == 4 {
                "must be 4 digits for this card"
            } else {
                "must be 3 digits"
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// For the provider call only.
    pub fn digits(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default()
    }

    fn errors(number: &str, expiry: &str, cvc: &str) -> Vec<(String, String)> {
        match Card::parse(number, expiry, cvc, today()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| (e.field, e.message)).collect(),
        }
    }

    /// The simulated provider's test cards and common brands' test numbers pass, spaces
    /// allowed; a wrong check digit, a letter or a short number does not.
    #[test]
    fn the_test_cards_pass_the_luhn_check_and_typos_do_not() {
        for number in [
            "4242424242424242",
            "4000000000000002",
            "4000000000009995",
            "4000000000000259",
            "4242 4242 4242 4242",
            "378282246310005",
            "5555555555554444",
        ] {
            assert!(CardNumber::parse(number).is_ok(), "{number}");
        }
        assert!(CardNumber::parse("4242424242424241").is_err());
        assert!(CardNumber::parse("42424242x2424242").is_err());
        assert!(CardNumber::parse("4242").is_err());
    }

    /// Each brand is recognised by its prefixes, including Mastercard's 2-series.
    #[test]
    fn brands_come_from_the_leading_digits() {
        let brand = |n: &str| CardNumber::parse(n).map(|n| n.brand()).ok();
        assert_eq!(brand("4242424242424242"), Some(Brand::Visa));
        assert_eq!(brand("5555555555554444"), Some(Brand::Mastercard));
        assert_eq!(brand("2223003122003222"), Some(Brand::Mastercard));
        assert_eq!(brand("378282246310005"), Some(Brand::Amex));
        assert_eq!(brand("6011111111111117"), Some(Brand::Discover));
    }

    /// A card is valid through its expiry month, a month past it is refused, and each
    /// malformed shape tried (one-digit month, four-digit year, no slash) gets `must be MM/YY`.
    #[test]
    fn expiry_is_mm_yy_and_valid_through_its_month() {
        assert!(Expiry::parse("11/26", today()).is_ok(), "this month");
        assert!(Expiry::parse("01/30", today()).is_ok());
        assert_eq!(
            Expiry::parse("10/26", today()),
            Err("is in the past (the card has expired)")
        );
        assert_eq!(
            Expiry::parse("13/30", today()),
            Err("has a month outside 01-12")
        );
        for bad in ["1/30", "11/2030", "1130", "aa/bb", "11-30"] {
            assert_eq!(Expiry::parse(bad, today()), Err("must be MM/YY"), "{bad}");
        }
    }

    /// All three fields are checked in one pass, each error names its field, none quotes the
    /// value, and an Amex needs four CVC digits.
    #[test]
    fn every_bad_field_is_named_without_quoting_the_value() {
        assert_eq!(
            errors("4242424242424241", "13/99", "12"),
            vec![
                (
                    "card.number".into(),
                    "is not a valid card number (Luhn check failed)".into()
                ),
                ("card.expiry".into(), "has a month outside 01-12".into()),
                ("card.cvc".into(), "must be 3 digits".into()),
            ]
        );
        assert_eq!(
            errors("378282246310005", "12/30", "123"),
            vec![("card.cvc".into(), "must be 4 digits for this card".into())]
        );
        assert!(errors("4242424242424242", "12/30", "123").is_empty());
    }

    /// Neither a card's nor its summary's `Debug` print shows the full number or the CVC.
    #[test]
    fn debug_shows_neither_the_full_number_nor_the_cvc() {
        let card = Card::parse("4242424242424242", "12/30", "987", today()).unwrap_or_else(|_| {
            panic!("a valid card");
        });
        let shown = format!("{card:?} {:?}", card.summary());
        assert!(!shown.contains("4242424242424242"), "{shown}");
        assert!(!shown.contains("987"), "{shown}");
        assert!(shown.contains("visa ****4242"), "{shown}");
    }
}
