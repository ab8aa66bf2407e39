//! The real `user-service` binary: how it reacts to bad configuration and to SIGTERM.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use shop_testkit::isolation;

const BINARY: &str = env!("CARGO_BIN_EXE_user-service");

#[test]
fn bad_configuration_exits_2_naming_each_bad_variable() {
    let output = Command::new(BINARY)
        .env_clear()
        .env("HTTP_ADDR", "not-an-address")
        .env("DATABASE_URL", "mysql://somewhere/users")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HTTP_ADDR: could not be parsed as a socket address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("DATABASE_URL: has scheme 'mysql'"),
        "{stderr}"
    );
    assert!(stderr.contains("AMQP_URL: is not set"), "{stderr}");
}

#[tokio::test]
async fn sigterm_drains_and_exits_0() {
    let database_url = isolation::postgres_database().await.unwrap();
    let amqp_url = isolation::rabbitmq_vhost().await.unwrap();
    let port = free_port();
    let mut child = Command::new(BINARY)
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("GRPC_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", database_url)
        .env("AMQP_URL", amqp_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    let client = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = client.get(&ready).send().await
            && response.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "clean exit after SIGTERM");

    // The logs are JSON lines with the service name; the last one says it stopped.
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["service"], "user-service");
    assert_eq!(last["message"], "stopped");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}
