//! An SMTP server that accepts every mail and keeps none.
//!
//! notification-service mails every confirmed order. Pointed at the shared MailDev, a
//! benchmark would pile tens of thousands of mails into the catcher other people's tests read;
//! this sink answers the handful of SMTP commands lettre sends (RFC 5321, no extensions) and
//! counts the messages, so the mail leg of the system still runs for real.
//!
//! The chaos suite also keeps each message's recipients and text ([`serve_recording`]): "one
//! email per order event, none missing, none doubled" is checked on what really arrived here.
//! A [`Watch`] hands each message's `Message-ID` and arrival instant to whoever installed one
//! (scenario 7 times every mail from its event's due time to this sink).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::mpsc::UnboundedSender,
    time::Instant,
};

/// One message as it arrived: the `RCPT TO` addresses and the DATA, line endings kept.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub to: Vec<String>,
    pub data: String,
}

/// The messages a recording sink received so far.
pub type Mailbox = Arc<Mutex<Vec<Received>>>;

/// A message's arrival, as a [`Watch`] reports it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When the sink accepted it (before its `250`).
    pub at: Instant,
    /// The `Message-ID` header's value, if it had one.
    pub message_id: Option<String>,
}

/// Where a sink reports arrivals while someone listens: installed for a scenario, removed
/// after it; with none installed the sink only counts.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    listener: Arc<Mutex<Option<UnboundedSender<Arrival>>>>,
}

impl Watch {
    pub fn install(&self, sender: UnboundedSender<Arrival>) {
        *lock(&self.listener) = Some(sender);
    }

    pub fn remove(&self) {
        *lock(&self.listener) = None;
    }

    fn listening(&self) -> bool {
        lock(&self.listener).is_some()
    }

    fn report(&self, arrival: Arrival) {
        if let Some(sender) = lock(&self.listener).as_ref() {
            let _ = sender.send(arrival);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves SMTP on `listener` until the task is dropped; `accepted` counts the messages.
pub async fn serve(listener: TcpListener, accepted: Arc<AtomicU64>) -> std::io::Result<()> {
    serve_inner(listener, accepted, None, None).await
}

/// Like [`serve`], and reports each arrival to `watch` while a listener is installed.
pub async fn serve_watched(
    listener: TcpListener,
    accepted: Arc<AtomicU64>,
    watch: Watch,
) -> std::io::Result<()> {
    serve_inner(listener, accepted, None, Some(watch)).await
}

/// Like [`serve`], and keeps every message in `mailbox`.
pub async fn serve_recording(
    listener: TcpListener,
    accepted: Arc<AtomicU64>,
    mailbox: Mailbox,
) -> std::io::Result<()> {
    serve_inner(listener, accepted, Some(mailbox), None).await
}

async fn serve_inner(
    listener: TcpListener,
    accepted: Arc<AtomicU64>,
    mailbox: Option<Mailbox>,
    watch: Option<Watch>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let accepted = accepted.clone();
        let mailbox = mailbox.clone();
        let watch = watch.clone();
        tokio::spawn(async move {
            let _ = session(stream, &accepted, mailbox.as_ref(), watch.as_ref()).await;
        });
    }
}

/// The value of the `Message-ID` header in a message's DATA (headers end at the first empty
/// line; header names are case-insensitive).
fn message_id(data: &str) -> Option<String> {
    data.lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("message-id")
                .then(|| value.trim().to_owned())
        })
}

async fn session(
    stream: TcpStream,
    accepted: &AtomicU64,
    mailbox: Option<&Mailbox>,
    watch: Option<&Watch>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 bench-sink ESMTP\r\n").await?;
    let mut line = String::new();
    let mut in_data = false;
    let mut message = Received::default();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if in_data {
            if line == ".\r\n" || line == ".\n" {
                in_data = false;
                // Counted (and kept) before the 250: a sender that got its 250 has a message
                // here, one that did not may send it again — as with a real server.
                accepted.fetch_add(1, Ordering::Relaxed);
                if let Some(watch) = watch.filter(|watch| watch.listening()) {
                    watch.report(Arrival {
                        at: Instant::now(),
                        message_id: message_id(&message.data),
                    });
                }
                if let Some(mailbox) = mailbox {
                    mailbox
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(std::mem::take(&mut message));
                }
                write.write_all(b"250 OK: queued\r\n").await?;
            } else if mailbox.is_some() || watch.is_some_and(Watch::listening) {
                message.data.push_str(&line);
            }
            continue;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        if verb == "RCPT" && mailbox.is_some() {
            let address = line
                .split_once('<')
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(address, _)| address.to_owned())
                .unwrap_or_default();
            message.to.push(address);
        } else if verb == "MAIL" || verb == "RSET" {
            message = Received::default();
        }
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-bench-sink\r\n250 8BITMIME\r\n",
            "HELO" => b"250 bench-sink\r\n",
            "DATA" => {
                in_data = true;
                b"354 End data with <CR><LF>.<CR><LF>\r\n"
            }
            "QUIT" => {
                write.write_all(b"221 Bye\r\n").await?;
                return Ok(());
            }
            // MAIL, RCPT, RSET, NOOP and anything else: fine.
            _ => b"250 OK\r\n",
        };
        write.write_all(reply).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_id_is_read_from_the_headers_only() {
        let data = "From: shop <shop@example.com>\r\nmessage-id: <abc@shop.example>\r\nSubject: hi\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(message_id(data).as_deref(), Some("<abc@shop.example>"));
        assert_eq!(
            message_id("Subject: hi\r\n\r\nMessage-ID: <body@x>\r\n"),
            None
        );
    }
}
