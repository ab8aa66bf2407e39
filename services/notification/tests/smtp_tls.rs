//! `SMTP_TLS=starttls` (and `tls`) against a server that speaks it: the service's own mailer,
//! made from its own configuration (`SMTP_TLS`, `SMTP_TLS_CA_FILE`,
//! `SMTP_USERNAME`/`SMTP_PASSWORD`), sends one email to an SMTP server each test starts on
//! 127.0.0.1, which records every line it received and whether it arrived before or after the
//! TLS upgrade.
//!
//! The server is written here, small on purpose, because the claim "nothing but EHLO and
//! STARTTLS crosses in clear text" needs to know on which side of the upgrade each command
//! arrived, and no maintained crate tells that (crates.io, checked first): maik (a mock for
//! lettre's blocking client) asserts on the mails it accepted, mailin-embedded (blocking IO on a
//! thread pool, certificates from files) calls a handler per command without saying whether TLS
//! was on, mailcrab is a mail catcher application and samotop is built on async-std. This one
//! answers exactly the commands lettre sends, records each line with the connection's state,
//! and can leave STARTTLS out while still offering `AUTH` in clear, to tempt a client into a
//! plaintext fallback.
//!
//! No mail catcher or store is needed: the tests run without the native stack.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::sync::{Arc, Mutex};

use base64::{Engine, engine::general_purpose::STANDARD};
use notification_service::{
    config::NotificationConfig,
    mailer::Mailer,
    store::{Notification, past_order_email},
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use shop_runtime::{FromEnv, config::Env};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;

const USERNAME: &str = "shop-relay-user";
const PASSWORD: &str = "relay-password-7Qm2xV9c";

/// One line the server received, and whether TLS protected it.
#[derive(Debug, Clone)]
struct Seen {
    tls: bool,
    line: String,
}

/// A certificate authority made for one test, and a certificate it signed for 127.0.0.1.
struct Pki {
    dir: tempfile::TempDir,
    acceptor: TlsAcceptor,
}

impl Pki {
    fn new() -> Self {
        shop_runtime::install_crypto_provider();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "smtp test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &*ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        Self {
            dir,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }

    fn ca_file(&self) -> String {
        self.dir
            .path()
            .join("ca.pem")
            .to_string_lossy()
            .into_owned()
    }
}

/// How the test's server secures a connection.
#[derive(Clone)]
enum Offer {
    /// Plain SMTP only: no STARTTLS in its EHLO answer.
    Plain,
    /// STARTTLS offered in clear; the conversation goes on over TLS after it.
    StartTls(TlsAcceptor),
    /// TLS from the first byte (implicit TLS, `SMTP_TLS=tls`).
    Wrapped(TlsAcceptor),
}

/// The test's SMTP server: every line of every connection recorded.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    /// Listens on 127.0.0.1, secured as `offer` says. `AUTH PLAIN` is offered on either side of
    /// an upgrade: a client that sends credentials in clear gets them accepted, so the test
    /// sees it.
    async fn start(offer: Offer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, offer.clone(), Arc::clone(&record)));
            }
        });
        Self { port, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The lines that crossed in clear text.
    fn in_clear(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| !s.tls)
            .map(|s| s.line)
            .collect()
    }
}

/// What ended a conversation.
enum End {
    Closed,
    StartTls,
}

async fn session(stream: TcpStream, offer: Offer, seen: Arc<Mutex<Vec<Seen>>>) {
    let acceptor = match offer {
        Offer::Wrapped(acceptor) => {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            greet_and_converse(&mut BufReader::new(tls), true, false, &seen).await;
            return;
        }
        Offer::StartTls(acceptor) => Some(acceptor),
        Offer::Plain => None,
    };
    let mut plain = BufReader::new(stream);
    let offers_starttls = acceptor.is_some();
    if let End::StartTls = greet_and_converse(&mut plain, false, offers_starttls, &seen).await {
        // The client waits for the 220 before its handshake: nothing is left in the buffer.
        let Some(acceptor) = acceptor else { return };
        let Ok(tls) = acceptor.accept(plain.into_inner()).await else {
            return;
        };
        converse(&mut BufReader::new(tls), true, false, &seen).await;
    }
}

async fn greet_and_converse<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    tls: bool,
    offers_starttls: bool,
    seen: &Mutex<Vec<Seen>>,
) -> End {
    if io.write_all(b"220 test ESMTP\r\n").await.is_err() {
        return End::Closed;
    }
    converse(io, tls, offers_starttls, seen).await
}

/// Answers commands until QUIT, a closed connection, or an accepted STARTTLS.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    tls: bool,
    offers_starttls: bool,
    seen: &Mutex<Vec<Seen>>,
) -> End {
    let mut in_data = false;
    loop {
        let mut line = String::new();
        match io.read_line(&mut line).await {
            Ok(0) | Err(_) => return End::Closed,
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        seen.lock().unwrap().push(Seen {
            tls,
            line: line.clone(),
        });
        if in_data {
            if line == "." {
                in_data = false;
                io.write_all(b"250 queued\r\n").await.ok();
            }
            continue;
        }
        let verb = line
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => {
                let starttls = if offers_starttls {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                format!("250-test\r\n{starttls}250-AUTH PLAIN\r\n250 8BITMIME\r\n")
            }
            "STARTTLS" if offers_starttls => {
                io.write_all(b"220 go ahead\r\n").await.ok();
                return End::StartTls;
            }
            "AUTH" => "235 accepted\r\n".to_owned(),
            "MAIL" | "RCPT" | "RSET" | "NOOP" => "250 ok\r\n".to_owned(),
            "DATA" => {
                in_data = true;
                "354 end with .\r\n".to_owned()
            }
            "QUIT" => {
                io.write_all(b"221 bye\r\n").await.ok();
                return End::Closed;
            }
            _ => "502 not implemented\r\n".to_owned(),
        };
        if io.write_all(reply.as_bytes()).await.is_err() {
            return End::Closed;
        }
    }
}

/// The mailer the service would make, in development mode, for a relay on `port` with
/// credentials: `SMTP_TLS=tls` (`starttls`, `tls`), and `SMTP_TLS_CA_FILE` when given.
fn mailer(port: u16, tls: &str, ca_file: Option<&str>) -> Mailer {
    let port = port.to_string();
    let mut env = Env::from_pairs(
        [
            (
                "SERVICE_SECRET",
                "notification-test-secret-0123456789abcdef",
            ),
            ("SMTP_HOST", "127.0.0.1"),
            ("SMTP_PORT", port.as_str()),
            ("SMTP_TIMEOUT_MS", "5000"),
            ("SMTP_TLS", tls),
            ("SMTP_USERNAME", USERNAME),
            ("SMTP_PASSWORD", PASSWORD),
        ]
        .into_iter()
        .chain(ca_file.map(|file| ("SMTP_TLS_CA_FILE", file))),
    );
    let config = NotificationConfig::from_env(&mut env);
    env.finish().unwrap();
    Mailer::new(&config.unwrap().smtp).unwrap()
}

fn email() -> Notification {
    mongodb::bson::from_document(past_order_email(1, chrono::Utc::now())).unwrap()
}

/// Anything that would give the credentials away: the password, or AUTH PLAIN's encoding of it.
fn reveals_credentials(line: &str) -> bool {
    let plain = STANDARD.encode(format!("\0{USERNAME}\0{PASSWORD}"));
    line.contains(PASSWORD)
        || line.contains(&plain)
        || line.to_ascii_uppercase().starts_with("AUTH")
}

/// `SMTP_TLS=starttls` with the relay's CA in `SMTP_TLS_CA_FILE`: the email is accepted, and in
/// clear text the server saw exactly EHLO and STARTTLS; the credentials, MAIL FROM, the
/// recipients and the message all came after the upgrade.
#[tokio::test]
async fn starttls_sends_the_mail_and_the_credentials_only_after_the_upgrade() {
    let pki = Pki::new();
    let server = Server::start(Offer::StartTls(pki.acceptor.clone())).await;
    let mailer = mailer(server.port, "starttls", Some(pki.ca_file().as_str()));

    mailer.send(&email()).await.unwrap();

    let in_clear = server.in_clear();
    assert_eq!(in_clear.len(), 2, "in clear text: {in_clear:?}");
    assert!(in_clear[0].starts_with("EHLO "), "{in_clear:?}");
    assert_eq!(in_clear[1], "STARTTLS");
    let protected: Vec<String> = server
        .seen()
        .into_iter()
        .filter(|s| s.tls)
        .map(|s| s.line)
        .collect();
    let auth = STANDARD.encode(format!("\0{USERNAME}\0{PASSWORD}"));
    assert!(
        protected.contains(&format!("AUTH PLAIN {auth}")),
        "the credentials after the upgrade: {protected:?}"
    );
    for expected in [
        "MAIL FROM:",
        "RCPT TO:",
        "DATA",
        "Subject: Your order 1 is confirmed",
    ] {
        assert!(
            protected.iter().any(|l| l.starts_with(expected)),
            "{expected} after the upgrade: {protected:?}"
        );
    }
}

/// A server that does not offer STARTTLS (but would take a password in clear) gets no email
/// and no credentials: the send fails, and nothing but the greeting's EHLO (and QUIT) arrived.
#[tokio::test]
async fn a_server_without_starttls_gets_neither_the_mail_nor_the_credentials() {
    let server = Server::start(Offer::Plain).await;
    let mailer = mailer(server.port, "starttls", None);

    let err = mailer.send(&email()).await.unwrap_err();

    let seen = server.seen();
    assert!(!seen.is_empty(), "the mailer never connected: {err}");
    assert!(seen.iter().all(|s| !s.tls));
    assert!(
        seen.iter()
            .all(|s| s.line.starts_with("EHLO ") || s.line == "QUIT"),
        "more than EHLO crossed in clear text: {seen:?}"
    );
    assert!(!seen.iter().any(|s| reveals_credentials(&s.line)));
}

/// The relay's certificate is checked: without `SMTP_TLS_CA_FILE` its CA is not trusted (the
/// public web's roots do not know it), the handshake fails and nothing follows STARTTLS.
#[tokio::test]
async fn a_relay_certificate_from_a_ca_not_trusted_gets_nothing_after_starttls() {
    let pki = Pki::new();
    let server = Server::start(Offer::StartTls(pki.acceptor.clone())).await;
    let mailer = mailer(server.port, "starttls", None);

    let err = mailer.send(&email()).await.unwrap_err();

    let seen = server.seen();
    assert!(seen.iter().all(|s| !s.tls), "{err}: {seen:?}");
    let lines: Vec<&str> = seen.iter().map(|s| s.line.as_str()).collect();
    assert_eq!(lines.len(), 2, "{err}: {lines:?}");
    assert!(
        lines[0].starts_with("EHLO ") && lines[1] == "STARTTLS",
        "{lines:?}"
    );
}

/// `SMTP_TLS=tls`: TLS from the first byte, so the server sees nothing at all in clear, and the
/// credentials and the message arrive.
#[tokio::test]
async fn implicit_tls_sends_nothing_in_clear_text() {
    let pki = Pki::new();
    let server = Server::start(Offer::Wrapped(pki.acceptor.clone())).await;
    let mailer = mailer(server.port, "tls", Some(pki.ca_file().as_str()));

    mailer.send(&email()).await.unwrap();

    let seen = server.seen();
    assert!(seen.iter().all(|s| s.tls), "{seen:?}");
    let auth = STANDARD.encode(format!("\0{USERNAME}\0{PASSWORD}"));
    assert!(
        seen.iter().any(|s| s.line == format!("AUTH PLAIN {auth}")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.line.starts_with("MAIL FROM:")),
        "{seen:?}"
    );
}
