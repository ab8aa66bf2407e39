//! MongoDB (or a wire-compatible server such as FerretDB): one client, one database.

use std::time::Duration;

use mongodb::{
    Client, Database,
    bson::{Document, doc},
    options::ClientOptions,
};

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

/// Which kind of server answers: what a store may expect of its query planner.
///
/// The wire protocol is the same, the costs are not. MongoDB serves filters and sorts from
/// indexes. FerretDB v1 (the native stack's server, because MongoDB is not packaged here) hands
/// its backend only plain equality on `_id` and evaluates every other filter, `$in` on `_id`
/// included, by reading and decoding every document of the collection. A store that has to
/// run well on both picks its access path by this, rather than tuning MongoDB's path to
/// FerretDB's limits (ADR 0012; `bench/findings.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// MongoDB, or any server that uses its indexes (FerretDB v2 included).
    Indexed,
    /// FerretDB v1: only `{_id: <value>}` is pushed down.
    FerretDbV1,
}

impl Server {
    /// Asks the server (`buildInfo`: FerretDB v1 reports `ferretdbVersion: "v1.x"`).
    pub async fn detect(db: &Database) -> mongodb::error::Result<Self> {
        let info = db.run_command(doc! { "buildInfo": 1 }).await?;
        Ok(Self::of_build_info(&info))
    }

    /// The kind of server a `buildInfo` answer describes.
    pub fn of_build_info(info: &Document) -> Self {
        match info.get_str("ferretdbVersion") {
            Ok(version) if version.trim_start_matches('v').starts_with("1.") => Self::FerretDbV1,
            _ => Self::Indexed,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferretdb_v1_is_told_apart_from_every_server_that_uses_its_indexes() {
        let ferret = doc! { "version": "7.0.77", "ferretdbVersion": "v1.24.2" };
        assert_eq!(Server::of_build_info(&ferret), Server::FerretDbV1);
        let ferret2 = doc! { "version": "7.0.77", "ferretdbVersion": "v2.1.0" };
        assert_eq!(Server::of_build_info(&ferret2), Server::Indexed);
        let mongo = doc! { "version": "8.0.4" };
        assert_eq!(Server::of_build_info(&mongo), Server::Indexed);
    }
}
