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
    }
}
