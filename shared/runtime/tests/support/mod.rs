//! What the gRPC tests share: certificates made for each test, never committed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test binary uses its part

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A certificate authority and the PEM files it issued, in a directory removed on drop.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A CA called `name` (distinct names: a client looks its trust anchor up by name).
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        pki.write("ca.pem", &pki.ca.pem());
        pki
    }

    pub fn write(&self, name: &str, pem: &str) -> String {
        let path: PathBuf = self.dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_string_lossy().into_owned()
    }

    pub fn ca_file(&self) -> String {
        self.path("ca.pem")
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// A server certificate for `names` signed by this CA: (certificate file, key file).
    pub fn issue(&self, prefix: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &*self.ca)
            .unwrap();
        (
            self.write(&format!("{prefix}.pem"), &cert.pem()),
            self.write(&format!("{prefix}-key.pem"), &key.serialize_pem()),
        )
    }
}
