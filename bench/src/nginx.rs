//! nginx as the reference reverse proxy: Debian's package, one worker process, keep-alive on
//! both sides, no access log — the configuration an operator would use to put nginx in front
//! of an API, and the figure BRIEF §9 quotes.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{process::Child, time::Instant};

/// Where Debian puts it.
pub fn binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// A running nginx, stopped (its whole process group) when dropped.
#[derive(Debug)]
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    pub pid: u32,
    dir: PathBuf,
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .map(|uids| uids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

impl Nginx {
    /// Starts nginx on `addr` proxying everything to `upstream`, with its files in `dir`.
    pub async fn start(
        binary: &Path,
        addr: SocketAddr,
        upstream: SocketAddr,
        dir: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        let dir = dir.canonicalize()?;
        let d = dir.display();
        // As root the worker would switch to an unprivileged user that may not read `dir`.
        let user = if running_as_root() {
            "user root;\n"
        } else {
            ""
        };
        let config = format!(
            r#"# Written by shop-bench: the reference proxy (one worker, as in BRIEF §9).
{user}worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream trivial {{
        server {upstream};
        keepalive 256;
        keepalive_requests 10000000;
    }}
    server {{
        listen {addr} reuseport;
        location / {{
            proxy_pass http://trivial;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(dir.join("stderr.log"))?;
        let child = tokio::process::Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting nginx")?;
        let pid = child.id().context("nginx has a pid")?;
        let mut nginx = Self {
            addr,
            child,
            pid,
            dir: dir.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = nginx.child.try_wait()? {
                bail!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {addr} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(nginx)
    }

    /// The worker's pid (the master only forks it): where the CPU time goes.
    pub fn worker_pid(&self) -> Option<u32> {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid)).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// `nginx -s quit` equivalent: SIGQUIT, then kill.
    pub async fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(self.dir.join("tmp"));
    }
}
