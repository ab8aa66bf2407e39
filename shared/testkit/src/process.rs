//! A service binary run as a child process, for what only a real process shows: exit codes,
//! signal handling, what it prints, what it exports on the way out.

use std::{
    io::Read,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

use crate::BoxError;

/// A running service binary with its HTTP port known.
#[derive(Debug)]
pub struct ChildService {
    child: Child,
    pub http_port: u16,
}

impl ChildService {
    /// Starts `binary` with `env` on top of the inherited environment, its HTTP server on a
    /// free loopback port and gRPC on any port, stdout captured.
    pub fn start<K, V>(
        binary: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, BoxError>
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let http_port = free_port()?;
        let child = Command::new(binary)
            .env("HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("GRPC_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json")
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Self { child, http_port })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BoxError> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(response) = client.get(self.url("/readyz")).send().await
                && response.status() == 200
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("exited before becoming ready: {status}").into());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within {timeout:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process at once (SIGKILL): no shutdown code runs, as in a crash or an OOM kill.
    pub fn kill(mut self) -> Result<ExitStatus, BoxError> {
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// Sends SIGTERM and waits for the exit; returns the exit status and everything it printed.
    pub async fn terminate(mut self, timeout: Duration) -> Result<(ExitStatus, String), BoxError> {
        let pid = Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err(format!("still running {timeout:?} after SIGTERM").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut stdout = String::new();
        if let Some(mut pipe) = self.child.stdout.take() {
            pipe.read_to_string(&mut stdout)?;
        }
        Ok((status, stdout))
    }
}

impl Drop for ChildService {
    fn drop(&mut self) {
        // A test that failed half-way must not leave the binary running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
