//! The real `user-service` binary: how it reacts to bad configuration and to SIGTERM.

use std::{process::Command, time::Duration};

use shop_testkit::{isolation, process::ChildService};

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
    let mut service = ChildService::start(
        BINARY,
        [
            (
                "DATABASE_URL",
                isolation::postgres_database().await.unwrap(),
            ),
            ("AMQP_URL", isolation::rabbitmq_vhost().await.unwrap()),
        ],
    )
    .unwrap();
    service.wait_ready(Duration::from_secs(20)).await.unwrap();

    let (status, stdout) = service.terminate(Duration::from_secs(15)).await.unwrap();
    assert_eq!(status.code(), Some(0), "clean exit after SIGTERM");

    // The logs are JSON lines with the service name; the last one says it stopped.
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["service"], "user-service");
    assert_eq!(last["message"], "stopped");
}
