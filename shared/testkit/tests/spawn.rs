//! What `spawn_with` provisions when a test points a store's URL somewhere of its own (a
//! fault-injecting proxy, mostly): the server behind it is the shared one, so the service must
//! still get a slice nobody else uses. Without one, two such tests shared the gateway's cache
//! keys and one replayed the other's answers.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};
use shop_testkit::{infra, spawn_with};

/// A service that needs Redis and MongoDB and serves nothing of its own.
struct Stores;

impl Service for Stores {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("stores-test-service", 0, 0)
            .redis()
            .mongo()
    }

    async fn build(_: &Context, _: ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::default())
    }
}

#[tokio::test]
async fn a_store_reached_through_the_tests_own_url_still_gets_a_slice_of_its_own() {
    let own_urls = [
        ("REDIS_URL", infra::redis_url().await.unwrap()),
        ("MONGODB_URL", infra::mongodb_url().await.unwrap()),
    ];
    let first = spawn_with::<Stores>(own_urls.clone()).await.unwrap();
    let second = spawn_with::<Stores>(own_urls.clone()).await.unwrap();
    for (key, url) in &own_urls {
        assert_eq!(&first.env[*key], url, "the test's own {key} is used");
    }
    for slice in ["REDIS_KEY_PREFIX", "MONGODB_DATABASE"] {
        let (a, b) = (first.env.get(slice), second.env.get(slice));
        assert!(a.is_some_and(|a| !a.is_empty()), "no {slice} for the first");
        assert_ne!(a, b, "two services share {slice}");
    }

    // A test that names the slice too keeps it.
    let named = spawn_with::<Stores>([
        ("REDIS_URL", own_urls[0].1.clone()),
        ("REDIS_KEY_PREFIX", "chosen:".to_owned()),
    ])
    .await
    .unwrap();
    assert_eq!(named.env["REDIS_KEY_PREFIX"], "chosen:");
}
