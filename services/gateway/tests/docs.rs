//! The interactive API page: served by the gateway from assets in its binary, under a policy
//! that lets exactly those assets run, while the API keeps its `default-src 'none'`.

use crate::support;

use shop_auth::testing::TestIssuer;
use shop_testkit::{TestApp, contract::Unchecked};
use support::{Echo, gateway};

/// GETs one of the gateway's own pages (the document, the page showing it), which the document
/// does not list among the API's operations: its answer is not checked against it.
async fn page(app: &TestApp, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .with_extension(Unchecked)
        .send()
        .await
        .expect("the gateway answers")
}

/// The `src`/`href` of every `<script>`/`<link>` in the page.
fn assets(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(start) = rest.find(attribute) {
            rest = &rest[start + attribute.len()..];
            let Some(end) = rest.find('"') else { break };
            found.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    found
}

#[tokio::test]
async fn the_api_page_and_its_assets_are_served_from_the_gateway_under_a_policy_that_lets_them_run()
{
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let app = gateway(&echo.url, &issuer, []).await;

    let response = page(&app, "/api/v1/docs").await;
    assert_eq!(
        response.status(),
        200,
        "the redirect to /api/v1/docs/ is followed"
    );
    assert_eq!(response.url().path(), "/api/v1/docs/");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    let html = response.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("<script >"),
        "no inline script (the policy would block it)"
    );

    // Every asset the page names is a file of the gateway's own origin, and is served.
    let assets = assets(&html);
    assert!(
        assets.iter().any(|a| a.ends_with("swagger-ui-bundle.js")),
        "{assets:?}"
    );
    for asset in &assets {
        assert!(
            !asset.contains("://") && !asset.starts_with("//"),
            "{asset} is not local"
        );
        let url = response_url(&app, asset);
        let answer = app
            .client
            .get(&url)
            .with_extension(Unchecked)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{url}");
        assert!(!answer.bytes().await.unwrap().is_empty(), "{url}");
    }

    // The initializer points the page at the gateway's own document, which is served.
    let init = page(&app, "/api/v1/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(init.contains("/api/v1/openapi.json"), "{init}");
    assert!(!init.contains("petstore"), "{init}");
    assert_eq!(page(&app, "/api/v1/openapi.json").await.status(), 200);

    // An unknown file is a problem document; the API itself keeps the strict policy.
    let missing = page(&app, "/api/v1/docs/nothing-here.js").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let api = page(&app, "/api/v1/openapi.json").await;
    assert_eq!(
        api.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
}

/// An asset reference of the page, resolved against `/api/v1/docs/`.
fn response_url(app: &TestApp, asset: &str) -> String {
    let asset = asset.trim_start_matches("./");
    if asset.starts_with('/') {
        app.url(asset)
    } else {
        app.url(&format!("/api/v1/docs/{asset}"))
    }
}
