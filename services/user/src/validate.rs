//! The rules for what a caller may register with. Every broken rule becomes one field error, and
//! all of them are reported at once (422), so a form can show them all.

use shop_runtime::FieldError;

/// Passwords shorter than this are refused. Length is what makes a password hard to guess;
/// composition rules ("one digit, one symbol") mostly produce `Password1!` (NIST SP 800-63B).
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Generous, but bounded: hashing cost must not depend on what an attacker sends.
pub const MAX_PASSWORD_BYTES: usize = 256;
const MAX_NAME_CHARS: usize = 100;
const MAX_EMAIL_CHARS: usize = 254;

/// Trims and lower-cases an address and checks its shape (`local@domain.tld`, no spaces).
///
/// Lower-casing the local part is not strictly RFC 5321, but no mail provider in practice
/// distinguishes `Ann@` from `ann@`, and two accounts for them would be a support problem.
/// Whether the address *exists* can only be proven by sending mail to it.
pub fn normalise_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let valid = !local.is_empty()
        && email.chars().count() <= MAX_EMAIL_CHARS
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    valid.then_some(email)
}

/// A registration that passed every rule.
pub struct Registration {
    pub email: String,
    pub password: String,
    pub name: String,
}

/// Never prints the password.
impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("email", &self.email)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What is wrong with `password` for the account `email` (normalised; empty when unknown):
/// the rule of every password, a customer's at registration and the seeded administrator's
/// in production.
pub fn password_problems(password: &str, email: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if password.chars().count() < MIN_PASSWORD_CHARS {
        problems.push(format!(
            "must be at least {MIN_PASSWORD_CHARS} characters long"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        problems.push(format!("must be at most {MAX_PASSWORD_BYTES} bytes long"));
    }
    if !email.is_empty() && password.trim().to_lowercase().contains(email) {
        problems.push("must not contain the email".to_owned());
    }
    let mut chars = password.chars();
    if let Some(first) = chars.next()
        && chars.all(|c| c == first)
    {
        problems.push("must not repeat one character".to_owned());
    }
    problems
}

/// Checks a registration; `None` fields were missing from the request.
pub fn registration(
    email: Option<&str>,
    password: Option<&str>,
    name: Option<&str>,
) -> Result<Registration, Vec<FieldError>> {
    let mut errors = Vec::new();
    let email = match email {
        None => {
            errors.push(FieldError::new("email", "is required"));
            None
        }
        Some(raw) => {
            let email = normalise_email(raw);
            if email.is_none() {
                errors.push(FieldError::new("email", "is not an email address"));
            }
            email
        }
    };
    match password {
        None => errors.push(FieldError::new("password", "is required")),
        Some(password) => errors.extend(
            password_problems(password, email.as_deref().unwrap_or_default())
                .into_iter()
                .map(|problem| FieldError::new("password", problem)),
        ),
    }
    let name = match name.map(str::trim) {
        None | Some("") => {
            errors.push(FieldError::new("name", "is required"));
            None
        }
        Some(name) if name.chars().count() > MAX_NAME_CHARS => {
            errors.push(FieldError::new(
                "name",
                format!("must be at most {MAX_NAME_CHARS} characters long"),
            ));
            None
        }
        Some(name) => Some(name.to_owned()),
    };
    match (email, password, name) {
        (Some(email), Some(password), Some(name)) if errors.is_empty() => Ok(Registration {
            email,
            password: password.to_owned(),
            name,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalise_email("  Ann.Lee@Example.COM "),
            Some("ann.lee@example.com".into())
        );
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@",
            "ann@example",
            "ann@@example.com",
            "a nn@example.com",
            "ann@.example.com",
            "ann@example..com",
        ] {
            assert_eq!(normalise_email(bad), None, "{bad}");
        }
    }

    #[test]
    fn reports_every_broken_rule_by_field() {
        let errors = registration(Some("not-an-email"), Some("short"), Some("  ")).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["email", "password", "name"]);

        let errors = registration(None, None, None).unwrap_err();
        assert!(errors.iter().all(|e| e.message == "is required"));
        assert_eq!(errors.len(), 3);

        let errors = registration(
            Some("ann@example.com"),
            Some("xann@example.comx"),
            Some("Ann"),
        )
        .unwrap_err();
        assert_eq!(errors[0].message, "must not contain the email");
        let errors =
            registration(Some("ann@example.com"), Some("aaaaaaaaaaaaaa"), Some("Ann")).unwrap_err();
        assert_eq!(errors[0].message, "must not repeat one character");
    }

    #[test]
    fn accepts_a_good_registration() {
        let ok = registration(
            Some(" Ann@Example.com"),
            Some("correct horse battery"),
            Some(" Ann Lee "),
        )
        .unwrap();
        assert_eq!(ok.email, "ann@example.com");
        assert_eq!(ok.name, "Ann Lee");
        assert!(!format!("{ok:?}").contains("horse"), "{ok:?}");
    }
}
