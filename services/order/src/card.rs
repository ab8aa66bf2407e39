//! Card data in transit through order-service, and the fingerprint of a placing request.
//!
//! The customer sends their card with the order, but it is only used at the `Authorize` step,
//! which may run after a restart (the saga resumes from the database). So the card has to be
//! stored until then — encrypted (AES-256-GCM, the order id as associated data so a ciphertext
//! cannot be moved to another order) and **erased** in the same transaction that records the
//! authorization's outcome or the end of the saga. It is never logged and never returned; the
//! only card data kept afterwards are the last four digits payment-service answers with.
//!
//! The request fingerprint (for `Idempotency-Key`, kept as long as the order) covers the
//! request *without* the card number and the CVC: only what PCI DSS allows to be kept in the
//! clear (the first six and last four digits, the expiry). It is still an HMAC rather than a
//! plain hash, under a key of its own derived from `ORDER_CARD_KEY` with HKDF: a leaked
//! fingerprint key reveals nothing about the encryption key, and nothing it covers is secret.
//!
//! Why store the card at all, rather than authorize inside `POST /orders`: the request answers
//! at once (202) and the saga authorizes only after stock is reserved, possibly on another
//! instance after a crash. The only alternative that keeps that order of steps is holding the
//! card in memory, which a crash would lose. What is left behind is checked by
//! `no_card_number_or_cvc_in_the_database_the_events_or_the_logs` in `tests/card_data.rs`.
//!
//! Where it sits: [`crate::api`] validates the card ([`crate::validate`]), fingerprints the
//! request and seals the card into `order_cards` in the placing transaction; the
//! [`crate::driver`] opens it for the `Authorize` call and deletes the row in the transaction
//! that leaves `Authorize` (or ends the saga). The key is `ORDER_CARD_KEY`
//! ([`crate::config::OrderConfig::card_key`]). This is pattern SEC-19 (encryption at rest) of
//! `docs/patterns.md`, for the one piece of data that must wait for a later step.

use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    hkdf, hmac,
    rand::{SecureRandom, SystemRandom},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The card as payment-service needs it.
///
/// Plain strings that passed [`crate::validate::place_order`] (digits and Luhn, `MM/YY`, 3 or
/// 4 digits), so a typo is a 422 at once rather than a declined order later. The rules that
/// need more knowledge (an expiry in the past, the CVC length of the brand) stay with
/// payment-service, which owns them. Serialisable only so the vault can encrypt it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    /// The card number, digits only (spaces and dashes removed by validation). Never printed:
    /// the `Debug` impl shows the last four digits instead.
    pub number: String,
    /// `MM/YY`, trimmed. Not secret, and part of the request fingerprint.
    pub expiry: String,
    /// The verification code; never stored unencrypted, never in the fingerprint.
    pub cvc: String,
}

/// Never prints the number or the cvc.
impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("last4", &self.last4())
            .finish_non_exhaustive()
    }
}

impl Card {
    /// The last four digits: what the order may show and log about the card, never more.
    pub fn last4(&self) -> &str {
        let start = self.number.len().saturating_sub(4);
        self.number.get(start..).unwrap_or_default()
    }

    /// The issuer identification number (first six digits): with the last four, the most of
    /// a card number PCI DSS lets a merchant keep in the clear.
    pub fn first6(&self) -> &str {
        self.number
            .get(..6.min(self.number.len()))
            .unwrap_or_default()
    }
}

/// Encrypts cards for storage and fingerprints requests; built once from `ORDER_CARD_KEY`.
///
/// One vault per process, held by the [`crate::driver::Driver`] and shared with the API, so
/// the request that seals a card and the saga step that opens it use the same key. Changing
/// the key under running sagas makes their cards unreadable; the driver then declines the
/// authorization (and voids whatever an earlier attempt may have held) instead of failing.
#[derive(Clone)]
pub struct CardVault {
    /// The AES-256-GCM key (`ORDER_CARD_KEY`).
    key: std::sync::Arc<LessSafeKey>,
    /// The fingerprint key, derived from `ORDER_CARD_KEY` with HKDF.
    mac: hmac::Key,
    /// Draws a fresh nonce for every seal: a nonce repeated under one key would break GCM.
    random: SystemRandom,
}

/// Prints no key material.
impl std::fmt::Debug for CardVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardVault(..)")
    }
}

/// Sealing or opening failed. Deliberately without detail: an error that said *why* a
/// ciphertext did not open would help whoever tampered with it, and none of the causes is the
/// caller's to fix.
#[derive(Debug, thiserror::Error)]
#[error("card encryption failed")]
pub struct VaultError;

impl CardVault {
    /// `key` is 32 bytes (checked by the configuration).
    ///
    /// Fails only for a key of another length, which the configuration has already refused.
    ///
    /// Both keys come from the one configured secret, so operators rotate one value; HKDF with
    /// its own label keeps the fingerprint key independent of the encryption key.
    pub fn new(key: &[u8]) -> Result<Self, VaultError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| VaultError)?;
        // A key of its own for fingerprints, derived apart from the encryption key.
        let mac: hmac::Key = hkdf::Salt::new(hkdf::HKDF_SHA256, b"shop order-service")
            .extract(key)
            .expand(&[b"idempotency fingerprint v1"], hmac::HMAC_SHA256)
            .map_err(|_| VaultError)?
            .into();
        Ok(Self {
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
            mac,
            random: SystemRandom::new(),
        })
    }

    /// `nonce || ciphertext || tag`, bound to `order_id`, for the `order_cards` row.
    ///
    /// In practice it fails only if the system's random source does (no nonce, no seal): the
    /// API then answers
    /// 500 and stores nothing.
    ///
    /// A fresh random nonce per seal, stored in front of the ciphertext: the same card sealed
    /// twice gives two unrelated byte strings, so equal cards cannot be spotted in the table.
    pub fn seal(&self, order_id: Uuid, card: &Card) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| VaultError)?;
        let mut data = serde_json::to_vec(card).map_err(|_| VaultError)?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(order_id.as_bytes()),
                &mut data,
            )
            .map_err(|_| VaultError)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        Ok(sealed)
    }

    /// The card sealed for `order_id`. A ciphertext copied to another order's row does not
    /// open (the order id is the associated data), so rows cannot be swapped to pay with
    /// someone else's card.
    ///
    /// Fails for a truncated or altered ciphertext, another order, or another key; the
    /// driver treats each the same way, as a card that cannot be charged.
    pub fn open(&self, order_id: Uuid, sealed: &[u8]) -> Result<Card, VaultError> {
        if sealed.len() < NONCE_LEN {
            return Err(VaultError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| VaultError)?;
        let mut data = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(order_id.as_bytes()), &mut data)
            .map_err(|_| VaultError)?;
        serde_json::from_slice(plain).map_err(|_| VaultError)
    }

    /// The fingerprint of a (canonical, already validated) request body; the canonical form
    /// holds no card number and no CVC ([`crate::validate::PlaceOrder::canonical`]).
    pub fn fingerprint(&self, canonical: &[u8]) -> Vec<u8> {
        hmac::sign(&self.mac, canonical).as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> Card {
        Card {
            number: "4242424242424242".into(),
            expiry: "12/30".into(),
            cvc: "123".into(),
        }
    }

    /// A sealed card shows no digits, opens for its own order only and under its own key
    /// only, and its `Debug` print shows the last four digits and not the CVC.
    #[test]
    fn sealed_cards_open_only_for_their_order_and_print_nothing_secret() {
        let vault = CardVault::new(&[7u8; 32]).unwrap();
        let order = Uuid::now_v7();
        let sealed = vault.seal(order, &card()).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("4242"));
        assert_eq!(vault.open(order, &sealed).unwrap(), card());
        assert!(vault.open(Uuid::now_v7(), &sealed).is_err());
        assert!(
            CardVault::new(&[8u8; 32])
                .unwrap()
                .open(order, &sealed)
                .is_err()
        );
        let printed = format!("{:?}", card());
        assert!(
            printed.contains("4242") && !printed.contains("42424242"),
            "{printed}"
        );
        assert!(!printed.contains("123"), "{printed}");
    }

    /// A fingerprint is stable for one body and key, changes with either, and is not what an
    /// HMAC under the raw encryption key would give.
    #[test]
    fn fingerprints_depend_on_body_and_key() {
        let vault = CardVault::new(&[7u8; 32]).unwrap();
        // Not a plain HMAC under the encryption key: the fingerprint key is derived apart.
        assert_ne!(
            vault.fingerprint(b"a"),
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]), b"a")
                .as_ref()
                .to_vec()
        );
        assert_eq!(vault.fingerprint(b"a"), vault.fingerprint(b"a"));
        assert_ne!(vault.fingerprint(b"a"), vault.fingerprint(b"b"));
        assert_ne!(
            vault.fingerprint(b"a"),
            CardVault::new(&[8u8; 32]).unwrap().fingerprint(b"a")
        );
    }
}
