//! The MongoDB server the tests run against answers a lookup by `_id` from an index. On MongoDB
//! that is a given; FerretDB v1 on PostgreSQL (the native stack) has it only because
//! `deploy/local/ferretdb-id-index.sql` gives every FerretDB table a GIN index on `_id` and
//! plans each query for its values (ADR 0018). Without either, `explain` shows a sequential
//! scan, and notification-service's every read by `_id` grows with its history.

use mongodb::bson::{Document, doc};
use shop_runtime::stores::mongo::Server;
use shop_testkit::isolation;

#[tokio::test]
async fn a_lookup_by_id_is_an_index_lookup_on_a_collection_the_server_just_created() {
    let (url, name) = isolation::mongo_database().await.unwrap();
    let client = mongodb::Client::with_uri_str(&url).await.unwrap();
    let db = client.database(&name);
    // Created now, after the stack was set up: FerretDB makes its table here, so this also
    // proves the index reaches tables made later (the event trigger), not only existing ones.
    let stored = db.collection::<Document>("history");
    let documents =
        (0..2_000).map(|i| doc! { "_id": format!("id-{i:05}"), "body": "x".repeat(200) });
    stored
        .insert_many(documents.collect::<Vec<_>>())
        .await
        .unwrap();

    let plan = db
        .run_command(doc! { "explain": { "find": "history", "filter": { "_id": "id-01234" } } })
        .await
        .unwrap();
    let plan = plan.to_string();
    let indexed = match Server::detect(&db).await.unwrap() {
        // PostgreSQL's plan: a bitmap (or plain) index scan on the stack's `<table>_id_gin`.
        Server::FerretDbV1 => plan.contains("Index Scan") && plan.contains("_id_gin"),
        // MongoDB's `_id` plans: IDHACK (≤ 7), EXPRESS_IXSCAN (8), or an IXSCAN.
        Server::Indexed => ["IDHACK", "EXPRESS", "IXSCAN"]
            .iter()
            .any(|stage| plan.contains(stage)),
    };
    assert!(indexed, "a lookup by _id is not served by an index: {plan}");

    // And the answer is the document asked for (an index that found nothing would be no help).
    let found = stored
        .find_one(doc! { "_id": "id-01234" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.get_str("_id").unwrap(), "id-01234");
    db.drop().await.unwrap();
}

/// The other half of ADR 0018: FerretDB's driver caches prepared statements, and PostgreSQL
/// switches a cached statement to a generic plan (where the key `$1` is no constant the index
/// matches) once custom plans seem no cheaper, as they are on a day's collection that is still
/// nearly empty; that plan would then be kept while the day fills. `explain` cannot show it (it
/// is a statement of its own), so this reads the setting where FerretDB's sessions get it:
/// the `ferretdb` database of the stack's PostgreSQL, when the tests run on the native stack.
#[tokio::test]
async fn ferretdbs_backend_database_plans_every_query_for_its_values() {
    use sqlx::{Connection, PgConnection};

    let admin = shop_testkit::infra::postgres_admin_url().await.unwrap();
    let mut postgres = PgConnection::connect(&admin).await.unwrap();
    let backend: Option<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname = 'ferretdb'")
            .fetch_optional(&mut postgres)
            .await
            .unwrap();
    if backend.is_none() {
        // Not the native stack (e.g. containers started by the test kit): MongoDB's `_id`
        // index needs no plan setting, and the test above checks it.
        return;
    }
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path("/ferretdb");
    let mut ferretdb = PgConnection::connect(url.as_str()).await.unwrap();
    let mode: String = sqlx::query_scalar("SELECT current_setting('plan_cache_mode')")
        .fetch_one(&mut ferretdb)
        .await
        .unwrap();
    assert_eq!(mode, "force_custom_plan");
}
