//! Every email is rendered from two templates in `services/notification/templates/`: a plain
//! text one (`<name>.txt`, which also sets the subject) and an HTML one (`<name>.html`,
//! extending `layout.html`). Both parts go into one `multipart/alternative` message, so every
//! mail client shows the best one it can.
//!
//! Templates are [minijinja](https://docs.rs/minijinja) (Jinja2 syntax), compiled into the
//! binary with `include_str!`: a template error is a build-and-test error, never a runtime
//! file-not-found. The environment is strict about undefined variables: a template that uses a
//! field the event did not provide fails to render (the event is parked with the reason)
//! instead of sending "Dear ," to a customer. HTML templates escape every value.
//!
//! Two filters make values readable for humans:
//! * `money`: `{"amount": 1999, "currency": "EUR"}` → `19.99 EUR` (minor units per ISO 4217).
//! * `plain`: a reason code (`payment_declined`, `insufficient_funds`, ...) → words.

use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};

/// The kinds of notification, each a pair of templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    Welcome,
    OrderConfirmed,
    OrderCancelled,
    PaymentFailed,
    StockLow,
    OutOfStock,
}

impl Template {
    pub const ALL: [Self; 6] = [
        Self::Welcome,
        Self::OrderConfirmed,
        Self::OrderCancelled,
        Self::PaymentFailed,
        Self::StockLow,
        Self::OutOfStock,
    ];

    /// The template's name: its files, and what the notification record says.
    pub fn name(self) -> &'static str {
        match self {
            Self::Welcome => "welcome",
            Self::OrderConfirmed => "order_confirmed",
            Self::OrderCancelled => "order_cancelled",
            Self::PaymentFailed => "payment_failed",
            Self::StockLow => "stock_low",
            Self::OutOfStock => "out_of_stock",
        }
    }
}

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The compiled templates. Built once at start; rendering is CPU-only and quick.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

macro_rules! sources {
    ($($name:literal),* $(,)?) => {
        [$(
            (concat!($name, ".txt"), include_str!(concat!("../templates/", $name, ".txt"))),
            (concat!($name, ".html"), include_str!(concat!("../templates/", $name, ".html"))),
        )*]
    };
}

impl Templates {
    /// Compiles every template; fails on a syntax error.
    pub fn new() -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_filter("money", money_filter);
        env.add_filter("plain", |code: String| plain_reason(&code).to_owned());
        env.add_template("layout.html", include_str!("../templates/layout.html"))?;
        for (name, source) in sources!(
            "welcome",
            "order_confirmed",
            "order_cancelled",
            "payment_failed",
            "stock_low",
            "out_of_stock",
        ) {
            env.add_template(name, source)?;
        }
        Ok(Self { env })
    }

    /// Renders `template` with `context` (the event's fields, and what the handler adds).
    /// The text template must set `subject`.
    pub fn render(
        &self,
        template: Template,
        context: &serde_json::Value,
    ) -> Result<Rendered, Error> {
        let context = Value::from(minijinja::value::Serde(context));
        let text = self
            .env
            .get_template(&format!("{}.txt", template.name()))?
            .render_captured(context.clone())?;
        let subject = text
            .state()
            .lookup("subject")
            .map(|subject| subject.to_string())
            .map(|subject| subject.trim().to_owned())
            .filter(|subject| !subject.is_empty())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UndefinedError,
                    format!("{}.txt does not set a subject", template.name()),
                )
            })?;
        let html = self
            .env
            .get_template(&format!("{}.html", template.name()))?
            .render(context)?;
        Ok(Rendered {
            subject,
            text: text.output().trim_start().to_owned(),
            html,
        })
    }
}

/// Longest name put into a mail; longer ones are cut at a character boundary.
pub const MAX_MAIL_NAME_CHARS: usize = 64;

/// A user-chosen name as it may appear in a mail: subject, greeting, `To:` display name.
///
/// Names come from anyone who registers, and the welcome mail goes to an address nobody has
/// verified: without this, registering a victim's address with the name "Your account is
/// locked, sign in at evil.example" sends a phishing line from the shop's own server, and
/// control characters (line breaks, bidirectional overrides) reshape what the reader sees. So:
/// * control and invisible formatting characters are removed, runs of whitespace become one
///   space, and the name is cut to [`MAX_MAIL_NAME_CHARS`];
/// * a name that could be read as a link or an address (`://`, `www.`, `@`, or a dot directly
///   followed by a letter or digit, as in `evil.example`) is not used at all: the mail greets
///   without a name ("Hello,") rather than carry a half-defused link.
///
/// Ordinary names stay as written: `José Müller-Lüdenscheidt`, `O'Brien`, `J. R. R. Tolkien`.
/// (HTML escaping is the templates' job; this is about what the words say.)
pub fn mail_name(raw: &str) -> String {
    let visible: String = raw
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .filter(|c| !c.is_control() && !is_invisible_format(*c))
        .collect();
    let name: String = visible
        .split(' ')
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_MAIL_NAME_CHARS)
        .collect();
    if looks_like_a_link(&name) {
        String::new()
    } else {
        name.trim().to_owned()
    }
}

/// Unicode format characters that change how text displays without showing: soft hyphen,
/// zero-width characters, bidirectional marks, embeddings, overrides and isolates, BOM.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

fn looks_like_a_link(name: &str) -> bool {
    let lower = name.to_lowercase();
    if lower.contains("://") || lower.contains("www.") || lower.contains('@') {
        return true;
    }
    // `evil.example`, `evil。example`: a dot (or a full-width or ideographic one) glued to the
    // next word. "J. R. R. Tolkien" has a space after each dot.
    let chars: Vec<char> = lower.chars().collect();
    chars.windows(2).any(|pair| {
        matches!(pair[0], '.' | '\u{3002}' | '\u{FF0E}' | '\u{FF61}') && pair[1].is_alphanumeric()
    })
}

fn money_filter(value: Value) -> Result<String, Error> {
    let bad = || {
        Error::new(
            ErrorKind::InvalidOperation,
            "money expects {amount: integer minor units, currency: ISO code}",
        )
    };
    let amount = i64::try_from(value.get_attr("amount")?).map_err(|_| bad())?;
    let currency = value.get_attr("currency")?;
    let currency = currency.as_str().ok_or_else(bad)?;
    Ok(format_money(amount, currency))
}

/// `1999, "EUR"` → `19.99 EUR`; `500, "JPY"` → `500 JPY`. Amounts are integer minor units; the
/// number of decimals is the currency's (ISO 4217), two for any currency not listed here.
pub fn format_money(amount: i64, currency: &str) -> String {
    let currency = currency.to_ascii_uppercase();
    let decimals: u32 = match currency.as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    };
    let sign = if amount < 0 { "-" } else { "" };
    let magnitude = amount.unsigned_abs();
    if decimals == 0 {
        return format!("{sign}{magnitude} {currency}");
    }
    let unit = 10u64.pow(decimals);
    let width = decimals as usize;
    format!(
        "{sign}{}.{:0width$} {currency}",
        magnitude / unit,
        magnitude % unit
    )
}

/// A reason code as words that fit after "because". Unknown codes get a general sentence
/// rather than the code itself (producers may add codes before this table knows them).
pub fn plain_reason(code: &str) -> &'static str {
    match code {
        // order cancellations
        "payment_declined" => "your payment was declined",
        "out_of_stock" => "an item in your order is no longer in stock",
        "cancelled_by_user" => "you cancelled it",
        "timeout" => "we could not complete it in time",
        // payment failures
        "card_declined" => "your card was declined",
        "insufficient_funds" => "the card has insufficient funds",
        "unknown_card" => "the card number was not recognised",
        "expired_card" => "the card has expired",
        _ => "of a problem on our side",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn money_reads_as_people_write_it() {
        assert_eq!(format_money(1999, "EUR"), "19.99 EUR");
        assert_eq!(format_money(5, "eur"), "0.05 EUR");
        assert_eq!(format_money(-250, "USD"), "-2.50 USD");
        assert_eq!(format_money(500, "JPY"), "500 JPY");
        assert_eq!(format_money(1500, "KWD"), "1.500 KWD");
    }

    #[test]
    fn every_template_renders_text_html_and_a_subject() {
        let templates = Templates::new().unwrap();
        let money = json!({ "amount": 4598, "currency": "EUR" });
        let level = json!({ "sku": "MUG-1", "available": 2, "reserved": 1 });
        let contexts = [
            (Template::Welcome, json!({ "name": "Ada <script>" })),
            (
                Template::OrderConfirmed,
                json!({ "name": "Ada", "order_id": "o-1", "total": money,
                        "items": [{ "name": "Mug", "quantity": 2, "unit_price": { "amount": 2299, "currency": "EUR" } }] }),
            ),
            (
                Template::OrderCancelled,
                json!({ "name": "Ada", "order_id": "o-1", "reason": "payment_declined" }),
            ),
            (
                Template::PaymentFailed,
                json!({ "name": "Ada", "order_id": "o-1", "amount": money, "reason": "insufficient_funds",
                        "card_brand": "visa", "card_last4": "9995" }),
            ),
            (
                Template::StockLow,
                json!({ "level": level, "threshold": 5 }),
            ),
            (Template::OutOfStock, json!({ "level": level })),
        ];
        for (template, context) in contexts {
            let rendered = templates.render(template, &context).unwrap();
            assert!(!rendered.subject.contains('\n'), "{template:?}");
            assert!(!rendered.text.is_empty() && rendered.html.contains("<html"));
        }

        let welcome = templates
            .render(Template::Welcome, &json!({ "name": "Ada <script>" }))
            .unwrap();
        assert!(
            welcome.html.contains("Ada &lt;script&gt;"),
            "{}",
            welcome.html
        );
        let failed = templates
            .render(
                Template::PaymentFailed,
                &json!({ "name": "Ada", "order_id": "o-1", "amount": money, "reason": "insufficient_funds",
                         "card_brand": "visa", "card_last4": "9995" }),
            )
            .unwrap();
        assert!(failed.text.contains("45.98 EUR"), "{}", failed.text);
        assert!(
            failed.text.contains("insufficient funds"),
            "{}",
            failed.text
        );
    }

    #[test]
    fn names_in_mail_carry_no_control_characters_and_no_links() {
        for (raw, expected) in [
            ("Ada Lovelace", "Ada Lovelace"),
            ("  José   Müller-Lüdenscheidt ", "José Müller-Lüdenscheidt"),
            ("O'Brien", "O'Brien"),
            ("J. R. R. Tolkien", "J. R. R. Tolkien"),
            ("Ada\r\nBcc: victim@example.com", ""),
            ("Ada\r\nLovelace\u{7}", "Ada Lovelace"),
            ("Ada \u{202E}ecalevoL", "Ada ecalevoL"),
            ("Zero\u{200B}Width", "ZeroWidth"),
            ("Sign in at https://evil.example/login", ""),
            ("Your account is locked, visit evil.example", ""),
            ("see www evil", "see www evil"),
            ("www.evil.example", ""),
            ("evil\u{3002}example", ""),
        ] {
            assert_eq!(mail_name(raw), expected, "{raw:?}");
        }
        assert_eq!(
            mail_name(&"a".repeat(500)).chars().count(),
            MAX_MAIL_NAME_CHARS
        );
    }

    /// The welcome mail greets by name when the name is harmless and without one otherwise:
    /// never with a link in the subject or the body.
    #[test]
    fn the_welcome_mail_greets_without_a_name_that_is_a_link() {
        let templates = Templates::new().unwrap();
        let named = templates
            .render(
                Template::Welcome,
                &json!({ "name": mail_name("Ada\nLovelace") }),
            )
            .unwrap();
        assert_eq!(named.subject, "Welcome to the shop, Ada Lovelace");
        assert!(
            named.text.starts_with("Hello Ada Lovelace,"),
            "{}",
            named.text
        );
        assert!(
            named.html.contains("Welcome, Ada Lovelace!"),
            "{}",
            named.html
        );

        let raw = "Your account is locked: sign in at https://evil.example/login";
        let phishing = templates
            .render(Template::Welcome, &json!({ "name": mail_name(raw) }))
            .unwrap();
        assert_eq!(phishing.subject, "Welcome to the shop");
        assert!(phishing.text.starts_with("Hello,"), "{}", phishing.text);
        assert!(
            phishing.html.contains("<h1>Welcome!</h1>"),
            "{}",
            phishing.html
        );
        for part in [&phishing.subject, &phishing.text, &phishing.html] {
            assert!(!part.contains("evil") && !part.contains("locked"), "{part}");
        }
    }

    #[test]
    fn a_missing_field_fails_instead_of_rendering_blank() {
        let templates = Templates::new().unwrap();
        let err = templates.render(Template::Welcome, &json!({})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UndefinedError, "{err}");
    }
}
