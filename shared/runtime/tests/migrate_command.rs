//! `<service-binary> migrate`: applies the service's migrations to `DATABASE_URL` and exits,
//! reading nothing else of the service's configuration, so an init container or a Job migrates
//! with the database's credentials only. Each test gets a fresh database.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::{process::ExitCode, sync::OnceLock};

use axum::Router;
use shop_runtime::{
    BootError, Context, Endpoints, FromEnv, MigrateConfig, Migrated, Service, ServiceSpec,
    config::{ConfigError, Env, Secret},
    stores::postgres::Applied,
};
use shop_testkit::isolation;
use sqlx::{PgPool, migrate::Migrator};

static MIGRATIONS: Migrator = sqlx::migrate!("tests/migrations");

/// A service with migrations and a secret it requires to run, which migrating must not need.
struct Greetings;

struct GreetingConfig {
    _secret: Secret<String>,
}

impl FromEnv for GreetingConfig {
    fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        Ok(Self {
            _secret: Secret(env.required("GREETING_SECRET", "a secret")?),
        })
    }
}

impl Service for Greetings {
    type Config = GreetingConfig;

    fn spec() -> ServiceSpec {
        ServiceSpec::new("greeting-test-service", 0, 0).postgres(&MIGRATIONS)
    }

    async fn build(_: &Context, _: GreetingConfig) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new()))
    }
}

/// A service whose second migration does not parse.
struct Broken;

static BROKEN: OnceLock<Migrator> = OnceLock::new();

impl Service for Broken {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("broken-test-service", 0, 0).postgres(BROKEN.get().expect("loaded"))
    }

    async fn build(_: &Context, (): ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new()))
    }
}

/// A service without a database.
struct Stateless;

impl Service for Stateless {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("stateless-test-service", 0, 0)
    }

    async fn build(_: &Context, (): ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new()))
    }
}

fn config(database_url: &str) -> MigrateConfig {
    let mut env = Env::from_pairs([("DATABASE_URL", database_url)]);
    MigrateConfig::from_env("greeting-test-service", &mut env).unwrap()
}

async fn greetings(database_url: &str) -> Vec<String> {
    let pool = PgPool::connect(database_url).await.unwrap();
    let texts = sqlx::query_scalar("SELECT text FROM greetings ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    texts
}

#[tokio::test]
async fn migrate_applies_the_migrations_once_and_says_which_with_only_the_database_url() {
    let url = isolation::postgres_database().await.unwrap();

    // The service itself would not start from these variables (GREETING_SECRET is missing)...
    let mut env = Env::from_pairs([("DATABASE_URL", url.as_str())]);
    assert!(shop_runtime::load::<Greetings>(&mut env).is_err());
    // ...but its migrations need nothing more.
    let first = shop_runtime::migrate::<Greetings>(&config(&url))
        .await
        .unwrap();
    assert_eq!(
        first,
        Migrated::Applied(vec![Applied {
            version: 1,
            description: "greetings".to_owned()
        }])
    );
    assert_eq!(greetings(&url).await, ["hello"]);

    // Run again (the next pod's init container): nothing left to apply, nothing applied twice.
    let second = shop_runtime::migrate::<Greetings>(&config(&url))
        .await
        .unwrap();
    assert_eq!(second, Migrated::Applied(Vec::new()));
    assert_eq!(greetings(&url).await, ["hello"]);
}

/// The command line as the init container runs it: exit codes, and what each failure says.
/// Not `#[tokio::test]`: `run_with` starts its own runtime, as `main` does.
#[test]
fn the_migrate_subcommand_exits_0_when_migrated_1_when_it_cannot_and_2_for_bad_settings() {
    let setup = tokio::runtime::Runtime::new().unwrap();
    let url = setup.block_on(isolation::postgres_database()).unwrap();
    let migrate = |pairs: Vec<(&str, &str)>| {
        shop_runtime::run_with::<Greetings>(["migrate".to_owned()], Env::from_pairs(pairs))
    };

    assert_eq!(migrate(vec![("DATABASE_URL", &url)]), ExitCode::SUCCESS);
    assert_eq!(setup.block_on(greetings(&url)), ["hello"]);
    assert_eq!(migrate(vec![("DATABASE_URL", &url)]), ExitCode::SUCCESS);

    // No database answering within STARTUP_TIMEOUT_SECONDS: a failure, not a success.
    let nowhere = "postgres://shop:secret@127.0.0.1:1/nothing";
    let unreachable = migrate(vec![
        ("DATABASE_URL", nowhere),
        ("STARTUP_TIMEOUT_SECONDS", "1"),
    ]);
    assert_eq!(unreachable, ExitCode::FAILURE);

    // Settings that cannot work, and arguments the binary does not know: 2.
    assert_eq!(migrate(vec![]), ExitCode::from(2));
    assert_eq!(
        migrate(vec![("DATABASE_URL", "mysql://127.0.0.1/x")]),
        ExitCode::from(2)
    );
    let unknown = shop_runtime::run_with::<Greetings>(
        ["migrations".to_owned()],
        Env::from_pairs([("DATABASE_URL", url.as_str())]),
    );
    assert_eq!(unknown, ExitCode::from(2));

    // A service without migrations has nothing to do, and needs no database for it.
    let stateless = shop_runtime::run_with::<Stateless>(["migrate".to_owned()], Env::default());
    assert_eq!(stateless, ExitCode::SUCCESS);
}

#[tokio::test]
async fn a_migration_that_fails_is_named_and_nothing_after_it_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_first.sql"),
        "CREATE TABLE first (id int);",
    )
    .unwrap();
    std::fs::write(dir.path().join("0002_broken.sql"), "CREATE TABLE broken (;").unwrap();
    std::fs::write(
        dir.path().join("0003_third.sql"),
        "CREATE TABLE third (id int);",
    )
    .unwrap();
    let migrator = Migrator::new(dir.path())
        .await
        .expect("the migrations load");
    assert!(BROKEN.set(migrator).is_ok(), "loaded once");
    let url = isolation::postgres_database().await.unwrap();

    let err = shop_runtime::migrate::<Broken>(&config(&url))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("migration 2"), "{err}");
    assert!(err.contains("syntax error"), "{err}");

    let pool = PgPool::connect(&url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name IN ('first', 'broken', 'third') \
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(tables, ["first"]);
}

#[tokio::test]
async fn a_service_without_migrations_has_nothing_to_migrate() {
    // Not even a database URL is needed to say so.
    let config = config("postgres://unused@127.0.0.1:1/unused");
    assert_eq!(
        shop_runtime::migrate::<Stateless>(&config).await.unwrap(),
        Migrated::NoMigrations
    );
}
