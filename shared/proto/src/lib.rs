//! Generated protobuf messages and gRPC clients/servers, one module per proto package.
//!
//! The `.proto` files in `/proto` are the source of truth; this crate only compiles them
//! (see `build.rs`). Package `shop.inventory.v1` becomes [`inventory::v1`], and so on.

#![allow(missing_debug_implementations)] // generated clients and servers do not derive Debug

/// The encoded `FileDescriptorSet` of every package, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("shop.common.v1");
    }
}

pub mod user {
    pub mod v1 {
        tonic::include_proto!("shop.user.v1");
    }
}

pub mod catalog {
    pub mod v1 {
        tonic::include_proto!("shop.catalog.v1");
    }
}

pub mod inventory {
    pub mod v1 {
        tonic::include_proto!("shop.inventory.v1");
    }
}

pub mod payment {
    pub mod v1 {
        tonic::include_proto!("shop.payment.v1");

        /// Shows the last four digits only: a request logged with `{:?}` (by a tracing layer,
        /// a panic message, a test failure) must not leak the card number or the CVC.
        impl std::fmt::Debug for Card {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let digits = self.number.chars().filter(char::is_ascii_digit).count();
                // Too short to be a card number: it may be a typo'd fragment; show none of it.
                let last4: String = if self.number.chars().count() >= 12 {
                    let skip = self.number.chars().count() - 4;
                    self.number.chars().skip(skip).collect()
                } else {
                    String::new()
                };
                f.debug_struct("Card")
                    .field("number", &format_args!("****{last4} ({digits} digits)"))
                    .field("expiry", &self.expiry)
                    .field("cvc", &"***")
                    .finish()
            }
        }

        #[cfg(test)]
        mod tests {
            #[test]
            fn debug_never_shows_the_card_number_or_cvc() {
                let card = super::Card {
                    number: "4242424242424242".into(),
                    expiry: "12/30".into(),
                    cvc: "123".into(),
                };
                let request = super::AuthorizeRequest {
                    card: Some(card),
                    ..Default::default()
                };
                let shown = format!("{request:?}");
                assert!(!shown.contains("4242424242424242"), "{shown}");
                assert!(!shown.contains("123\""), "{shown}");
                assert!(shown.contains("****4242"), "{shown}");
            }
        }
    }
}
