//! Sending one stored notification over SMTP with [lettre](https://docs.rs/lettre).
//!
//! The message is `multipart/alternative` (plain text first, then HTML), with the stored
//! Message-ID, so every attempt for one notification sends the identical message.
//!
//! The connection is what `SMTP_TLS` says ([`SmtpTls`]): plain SMTP for the local mail catcher,
//! which speaks nothing else; STARTTLS (required: no plaintext fallback when the server does not
//! offer it) or implicit TLS for a real relay, the certificate checked against the public web's
//! roots (rustls with `webpki-roots`) and the extra ones of `SMTP_TLS_CA_FILE` (a private relay's
//! CA), with `SMTP_USERNAME`/`SMTP_PASSWORD` when given. `tests/smtp_tls.rs` holds this against an
//! SMTP server the test starts.
//! Production refuses plain SMTP and a relay without credentials (`crate::config`, ADR 0017).

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
        extension::ClientId,
    },
};

use crate::{
    config::{SmtpConfig, SmtpTls},
    store::Notification,
};

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Might work later: the server is unreachable, timed out, or answered 4xx.
    Transient(String),
    /// Will not work: the server refused the message or a recipient (5xx), or the message
    /// cannot be built from what was stored.
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transient(reason) | Self::Permanent(reason) => f.write_str(reason),
        }
    }
}

/// TLS towards `config.host`: its certificate checked against the public web's roots (lettre's
/// default store, `webpki-roots`) plus `config.ca`, for the name `config.host`.
fn tls_parameters(config: &SmtpConfig) -> Result<TlsParameters, String> {
    let mut builder = TlsParameters::builder(config.host.clone());
    if let Some(pem) = &config.ca {
        let roots = Certificate::from_pem(pem)
            .map_err(|err| format!("SMTP_TLS_CA_FILE for {}: {err}", config.host))?;
        builder = builder.add_root_certificate(roots);
    }
    builder
        .build_rustls()
        .map_err(|err| format!("SMTP TLS for {}: {err}", config.host))
}

/// An SMTP client with a small connection pool.
#[derive(Debug, Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// The transport `config` describes; an error when TLS cannot be set up for its host.
    pub fn new(config: &SmtpConfig) -> Result<Self, String> {
        let domain = config.from.email.domain().to_owned();
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            // Required: a server that does not offer STARTTLS gets nothing after EHLO.
            SmtpTls::StartTls => Tls::Required(tls_parameters(config)?),
            SmtpTls::Tls => Tls::Wrapper(tls_parameters(config)?),
        };
        // "Dangerous" is lettre's word for a builder with no TLS chosen yet: `tls` sets it.
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .tls(tls)
            .port(config.port)
            .hello_name(ClientId::Domain(domain))
            .timeout(Some(config.timeout));
        if let Some(credentials) = &config.credentials {
            builder = builder.credentials(Credentials::new(
                credentials.username.clone(),
                credentials.password.0.clone(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from: config.from.clone(),
        })
    }

    /// The domain Message-IDs are made in: the sender's.
    pub fn domain(&self) -> &str {
        self.from.email.domain()
    }

    /// Sends `notification` and returns once the server accepted it (its 250 reply to the
    /// message), or why not.
    pub async fn send(&self, notification: &Notification) -> Result<(), SendError> {
        let message = self.build(notification)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_permanent() => Err(SendError::Permanent(format!(
                "the mail server refused the message: {err}"
            ))),
            Err(err) => Err(SendError::Transient(format!(
                "the mail server did not accept the message: {err}"
            ))),
        }
    }

    fn build(&self, notification: &Notification) -> Result<Message, SendError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(notification.subject.clone())
            .message_id(Some(notification.message_id.clone()));
        for to in &notification.to {
            let mailbox: Mailbox = to.parse().map_err(|err| {
                SendError::Permanent(format!("'{to}' is not a recipient address: {err}"))
            })?;
            builder = builder.to(mailbox);
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                notification.text.clone(),
                notification.html.clone(),
            ))
            .map_err(|err| SendError::Permanent(format!("cannot build the message: {err}")))
    }
}
