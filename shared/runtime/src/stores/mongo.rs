//! MongoDB (or a wire-compatible server such as FerretDB): one client, one database.

use std::time::Duration;

use mongodb::{Client, Database, bson::doc, options::ClientOptions};

use super::SecretUrl;
use crate::{BootError, health::Readiness};

/// Settings for the service's own document database.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// `MONGODB_URL`, e.g. `mongodb://catalog:secret@mongo:27017/?authSource=catalog`.
    pub url: SecretUrl,
    /// `MONGODB_DATABASE`, e.g. `catalog`.
    pub database: String,
}

/// Creates the client and registers the `mongodb` readiness probe.
///
/// The driver connects lazily and reconnects by itself; a short server-selection timeout
/// makes an unreachable server an error within seconds instead of the default 30 s.
pub async fn connect(
    config: &MongoConfig,
    application_name: &str,
    readiness: &Readiness,
) -> Result<Database, BootError> {
    let mut options = ClientOptions::parse(config.url.expose())
        .await
        .map_err(|err| BootError::store("mongodb", err))?;
    options.app_name = Some(application_name.to_owned());
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.connect_timeout = Some(Duration::from_secs(2));
    let client = Client::with_options(options).map_err(|err| BootError::store("mongodb", err))?;
    let database = client.database(&config.database);

    let probe_db = database.clone();
    readiness.add("mongodb", move || {
        let db = probe_db.clone();
        async move {
            db.run_command(doc! { "ping": 1 })
                .await
                .map(drop)
                .map_err(|err| err.to_string())
        }
    });
    Ok(database)
}
