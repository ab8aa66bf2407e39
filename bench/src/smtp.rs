//! An SMTP server that accepts every mail and keeps none.
//!
//! notification-service mails every confirmed order. Pointed at the shared MailDev, a
//! benchmark would pile tens of thousands of mails into the catcher other people's tests read;
//! this sink answers the handful of SMTP commands lettre sends (RFC 5321, no extensions) and
//! counts the messages, so the mail leg of the system still runs for real.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// Serves SMTP on `listener` until the task is dropped; `accepted` counts the messages.
pub async fn serve(listener: TcpListener, accepted: Arc<AtomicU64>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let _ = session(stream, &accepted).await;
        });
    }
}

async fn session(stream: TcpStream, accepted: &AtomicU64) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 bench-sink ESMTP\r\n").await?;
    let mut line = String::new();
    let mut in_data = false;
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if in_data {
            if line == ".\r\n" || line == ".\n" {
                in_data = false;
                accepted.fetch_add(1, Ordering::Relaxed);
                write.write_all(b"250 OK: queued\r\n").await?;
            }
            continue;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
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
