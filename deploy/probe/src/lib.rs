//! `shop-probe`: the one helper program the container images carry besides the service.
//!
//! The runtime images are distroless: no shell, no curl. Docker's `HEALTHCHECK`, the Helm
//! chart's migration init containers and its seed hook still need to ask a service whether it
//! is ready, so this ~200-line, std-only program does exactly that and nothing else:
//!
//! | command | what it does | used by |
//! |---|---|---|
//! | `shop-probe` (or `shop-probe ready [URL]`) | exits 0 when the service's `/readyz` answers 200 **and** every event consumer it reports (`consumer:<queue>`) is `up` | `HEALTHCHECK` in the Dockerfile, hence compose's `depends_on: service_healthy` |
//! | `shop-probe wait URL...` | polls each URL the same way until it passes (or `--timeout` seconds pass) | the seed hook, waiting for the consumers of the seed's events |
//! | `shop-probe once [--wait-for URL]... -- PROGRAM...` | waits for each URL as `wait` does, starts PROGRAM, waits until it is ready, stops it with SIGTERM and exits with its exit code | migrations in an init container; the demo seed in a Helm hook (after inventory consumes) |
//!
//! Why "consumers attached" counts as healthy here although `/readyz` does not require it: the
//! health check orders start-up (compose starts a producer only once its consumers are
//! healthy), and an event published before its consumer's queue exists is dropped by the
//! broker (docs/messaging.md). It is the same condition `deploy/local/stack.sh` waits for.
//!
//! `once` works because a service binds its listeners only after its start-up work (migrations,
//! the demo seed) is done: ready means that work is committed. Stopping it with SIGTERM is the
//! ordinary graceful shutdown.
//!
//! Without a URL, the service's own address is taken from `OPS_ADDR`, or `HTTP_ADDR` when that
//! is unset (the variables the service itself reads), with a wildcard host replaced by loopback.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    process::{Child, Command, ExitCode},
    thread,
    time::{Duration, Instant},
};

/// How long one HTTP exchange may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between two polls of `wait` and `once`.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Default bound of `wait` and `once`: a service gives up on its stores after 60 s by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The command line: `shop-probe [ready [URL] | wait [--timeout S] URL... | once [--timeout S] [--wait-for URL]... -- PROGRAM...]`.
pub fn cli(args: impl IntoIterator<Item = String>) -> ExitCode {
    let args: Vec<String> = args.into_iter().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => own_url().and_then(|url| ready(&url)),
        Some("ready") => match args.get(1) {
            Some(url) => ready(url),
            None => own_url().and_then(|url| ready(&url)),
        },
        Some("wait") => timeout_and_rest(&args[1..]).and_then(|(timeout, urls)| {
            if urls.is_empty() {
                return Err("wait: give at least one URL".to_owned());
            }
            urls.iter().try_for_each(|url| poll(url, timeout))
        }),
        Some("once") => timeout_and_rest(&args[1..]).and_then(|(timeout, rest)| {
            let (first, rest) = waits_and_rest(rest);
            match rest.split_first() {
                Some((dashes, program)) if dashes == "--" && !program.is_empty() => {
                    first.iter().try_for_each(|url| poll(url, timeout))?;
                    once(program, timeout)
                }
                _ => Err("once: usage: shop-probe once [--timeout SECONDS] [--wait-for URL]... -- PROGRAM [ARGS...]".to_owned()),
            }
        }),
        Some(other) => Err(format!(
            "unknown command '{other}'; usage: shop-probe [ready [URL] | wait URL... | once -- PROGRAM...]"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("shop-probe: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// `--timeout SECONDS` if it comes first, then the remaining arguments.
fn timeout_and_rest(args: &[String]) -> Result<(Duration, &[String]), String> {
    match args {
        [flag, secs, rest @ ..] if flag == "--timeout" => secs
            .parse()
            .map(|secs| (Duration::from_secs(secs), rest))
            .map_err(|_| format!("--timeout: '{secs}' is not a number of seconds")),
        rest => Ok((DEFAULT_TIMEOUT, rest)),
    }
}

/// The URLs of leading `--wait-for URL` pairs, then the remaining arguments.
fn waits_and_rest(mut args: &[String]) -> (Vec<String>, &[String]) {
    let mut urls = Vec::new();
    while let [flag, url, rest @ ..] = args {
        if flag != "--wait-for" {
            break;
        }
        urls.push(url.clone());
        args = rest;
    }
    (urls, args)
}

/// `http://127.0.0.1:<port>/readyz` for the port of `HTTP_ADDR`.
/// The service's own `/readyz`: on `OPS_ADDR` when the operational endpoints have a port of
/// their own, else on `HTTP_ADDR` (the variables the service itself reads).
fn own_url() -> Result<String, String> {
    let addr = std::env::var("OPS_ADDR")
        .ok()
        .filter(|addr| !addr.trim().is_empty())
        .or_else(|| std::env::var("HTTP_ADDR").ok())
        .ok_or_else(|| "neither OPS_ADDR nor HTTP_ADDR is set: give the URL to probe".to_owned())?;
    readyz_url(&addr)
}

fn readyz_url(http_addr: &str) -> Result<String, String> {
    let (host, port) = http_addr
        .rsplit_once(':')
        .ok_or_else(|| format!("'{http_addr}' is not host:port"))?;
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "[::1]",
        host => host,
    };
    Ok(format!("http://{host}:{port}/readyz"))
}

/// One check: 200, and every reported consumer attached.
fn ready(url: &str) -> Result<(), String> {
    let (status, body) = get(url)?;
    if status != 200 {
        return Err(format!("{url} answered {status}: {}", body.trim()));
    }
    match detached_consumers(&body).as_slice() {
        [] => Ok(()),
        detached => Err(format!(
            "{url}: consumers not attached yet: {}",
            detached.join(", ")
        )),
    }
}

/// Polls `ready(url)` until it passes or `timeout` is over; returns the last reason then.
fn poll(url: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match ready(url) {
            Ok(()) => return Ok(()),
            Err(reason) if Instant::now() >= deadline => {
                return Err(format!("not ready after {timeout:?}: {reason}"));
            }
            Err(_) => thread::sleep(POLL_EVERY),
        }
    }
}

/// Runs `program` until it is ready, then stops it gracefully; its exit code is ours.
fn once(program: &[String], timeout: Duration) -> Result<(), String> {
    let url = own_url()?;
    let mut child = Command::new(&program[0])
        .args(&program[1..])
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", program[0]))?;
    let deadline = Instant::now() + timeout;
    let outcome = loop {
        if let Some(status) = child.try_wait().map_err(|err| err.to_string())? {
            return Err(format!(
                "{} exited before it was ready ({status})",
                program[0]
            ));
        }
        match ready(&url) {
            Ok(()) => break Ok(()),
            Err(reason) if Instant::now() >= deadline => {
                break Err(format!(
                    "{} not ready after {timeout:?}: {reason}",
                    program[0]
                ));
            }
            Err(_) => thread::sleep(POLL_EVERY),
        }
    };
    terminate(&mut child)?;
    let status = child.wait().map_err(|err| err.to_string())?;
    outcome?;
    if status.success() {
        eprintln!("shop-probe: {} was ready and stopped cleanly", program[0]);
        Ok(())
    } else {
        Err(format!("{} did not stop cleanly ({status})", program[0]))
    }
}

fn terminate(child: &mut Child) -> Result<(), String> {
    let pid = i32::try_from(child.id()).map_err(|err| err.to_string())?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .map_err(|err| format!("cannot send SIGTERM to {pid}: {err}"))
}

/// A plain HTTP/1.1 GET of an `http://host:port/path` URL: (status, body).
fn get(url: &str) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("'{url}' is not an http:// URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr = authority
        .to_socket_addrs()
        .map_err(|err| format!("{authority}: {err}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
        .map_err(|err| format!("{url}: {err}"))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|err| err.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: shop-probe\r\nConnection: close\r\n\r\n"
    )
    .map_err(|err| format!("{url}: {err}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|err| format!("{url}: {err}"))?;
    parse_response(&String::from_utf8_lossy(&response))
}

fn parse_response(response: &str) -> Result<(u16, String), String> {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| "not an HTTP response".to_owned())?;
    Ok((status, body.to_owned()))
}

/// The `consumer:<queue>` checks of a `/readyz` body whose value is not `"up"`.
///
/// A text scan rather than a JSON parser keeps this program dependency-free; the runtime
/// writes the checks as `"consumer:<queue>":"<state>"` (serde_json, no spaces).
fn detached_consumers(body: &str) -> Vec<String> {
    body.match_indices("\"consumer:")
        .filter_map(|(at, _)| {
            let rest = &body[at + 1..];
            let (name, rest) = rest.split_once("\":\"")?;
            let (state, _) = rest.split_once('"')?;
            (state != "up").then(|| format!("{name}={state}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves `response` to one connection, on a loopback port: reads the whole request first
    /// (closing a socket with unread input resets the connection), answers, closes.
    fn serve_once(response: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 256];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            stream.write_all(response.as_bytes()).unwrap();
        });
        format!("http://{addr}/readyz")
    }

    #[test]
    fn ready_needs_200_and_every_consumer_attached() {
        let ok = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"status\":\"ready\",\"checks\":{\"consumer:inventory.events\":\"up\",\"postgres\":\"up\"},\"optional\":[\"consumer:inventory.events\"]}",
        );
        assert_eq!(ready(&ok), Ok(()));

        let detached = serve_once(
            "HTTP/1.1 200 OK\r\n\r\n{\"status\":\"ready\",\"checks\":{\"amqp\":\"down\",\"consumer:inventory.events\":\"down\",\"postgres\":\"up\"}}",
        );
        let err = ready(&detached).unwrap_err();
        assert!(err.contains("inventory.events=down"), "{err}");

        let unready = serve_once(
            "HTTP/1.1 503 Service Unavailable\r\n\r\n{\"detail\":\"Dependencies unavailable: postgres.\"}",
        );
        let err = ready(&unready).unwrap_err();
        assert!(err.contains("503") && err.contains("postgres"), "{err}");
    }

    #[test]
    fn nothing_listening_is_not_ready() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(ready(&format!("http://127.0.0.1:{port}/readyz")).is_err());
    }

    #[test]
    fn once_takes_its_waits_before_the_program() {
        let args: Vec<String> = [
            "--wait-for",
            "http://a/readyz",
            "--wait-for",
            "http://b/readyz",
            "--",
            "svc",
        ]
        .map(str::to_owned)
        .to_vec();
        let (urls, rest) = waits_and_rest(&args);
        assert_eq!(urls, ["http://a/readyz", "http://b/readyz"]);
        assert_eq!(rest, ["--", "svc"]);
    }

    #[test]
    fn own_address_comes_from_http_addr() {
        assert_eq!(
            readyz_url("0.0.0.0:8081").as_deref(),
            Ok("http://127.0.0.1:8081/readyz")
        );
        assert_eq!(
            readyz_url("[::]:8082").as_deref(),
            Ok("http://[::1]:8082/readyz")
        );
        assert_eq!(
            readyz_url("10.1.2.3:8083").as_deref(),
            Ok("http://10.1.2.3:8083/readyz")
        );
        assert!(readyz_url("8084").is_err());
    }
}
