//! What callers send cannot grow `/metrics`: the request metrics' labels come from closed sets
//! (`shop_runtime::metrics`). Its own test binary, so no other test's requests share the
//! process-wide recorder while the series are counted.

mod support;

use reqwest::Method;
use shop_auth::testing::TestIssuer;
use support::{Echo, gateway};
use uuid::Uuid;

/// The request counter's series on `/metrics`, without their values (the latency histogram
/// has the same label sets).
async fn request_series(app: &shop_testkit::TestApp) -> std::collections::BTreeSet<String> {
    let scrape = app.get("/metrics").await.expect("the gateway answers");
    let text = scrape.text().await.expect("a text body");
    text.lines()
        .filter(|line| line.starts_with("http_server_requests_total"))
        .map(|line| {
            line.rsplit_once(' ')
                .map_or(line, |(series, _)| series)
                .to_owned()
        })
        .collect()
}

/// One request with an invented method, or to an invented path, or both: the shapes that each
/// added series before (a new method on an unknown path, on a known route, and a new path).
async fn invented_request(app: &shop_testkit::TestApp, i: usize) -> u16 {
    let noise = Uuid::new_v4().simple().to_string().to_uppercase();
    let (method, path) = match i % 3 {
        0 => (format!("M{noise}"), format!("/{noise}")),
        1 => (format!("M{noise}"), "/api/v1/products".to_owned()),
        _ => ("GET".to_owned(), format!("/api/v1/{noise}/x")),
    };
    let method = Method::from_bytes(method.as_bytes()).expect("a token is a valid method");
    app.client
        .request(method, app.url(&path))
        // invented on purpose: no document lists them
        .with_extension(shop_testkit::contract::Unchecked)
        .send()
        .await
        .expect("the gateway answers")
        .status()
        .as_u16()
}

#[tokio::test]
async fn ten_thousand_invented_methods_and_paths_add_no_series() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let app = std::sync::Arc::new(gateway(&echo.url, &issuer, []).await);

    // One request of each shape first, and one scrape: the series they land in ("other",
    // "unmatched", the scrape's own) exist from now on.
    for i in 0..3 {
        let status = invented_request(&app, i).await;
        assert!(matches!(status, 404 | 405), "{status}");
    }
    request_series(&app).await;
    let before = request_series(&app).await;

    let mut statuses = std::collections::BTreeSet::new();
    for batch in 0..200 {
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..50 {
            let app = app.clone();
            requests.spawn(async move { invented_request(&app, batch * 50 + i).await });
        }
        while let Some(status) = requests.join_next().await {
            statuses.insert(status.unwrap());
        }
    }
    assert_eq!(
        statuses,
        [404, 405].into(),
        "every invented request was refused"
    );
    let after = request_series(&app).await;
    assert_eq!(
        after, before,
        "10,000 invented methods and paths landed in the series that already existed"
    );
    assert_eq!(echo.hits(), 0, "none reached a service");
}
