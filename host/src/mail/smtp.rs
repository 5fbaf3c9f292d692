//! Delivery over SMTP (`lettre`): the `[mail]` settings, and the [`Mailer`] the
//! outgoing-mail job sends through, at a configured rate.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SmtpTransport, Transport};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `[mail]`: where and how Pending Send emails are delivered. Without `smtp`, no
/// email is sent (and no outgoing-mail job exists).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailSettings {
    /// `smtp://host:port` (plaintext: loopback only unless `insecure`),
    /// `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465` (TLS); user and
    /// password may be in the URL (PLUGHOST_MAIL_SMTP).
    pub smtp: Option<String>,
    /// SMTP credentials (PLUGHOST_MAIL_USERNAME, PLUGHOST_MAIL_PASSWORD).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sender of emails that name none, e.g. `Contoso <news@contoso.example>`
    /// (PLUGHOST_MAIL_FROM).
    pub from: Option<String>,
    /// Most messages sent per minute by this process; 0: no limit
    /// (PLUGHOST_MAIL_MAX_PER_MINUTE).
    pub max_per_minute: u32,
    /// Delay before the first retry of a message the server refused for now (4xx);
    /// doubled for each further one (PLUGHOST_MAIL_RETRY_BACKOFF_MS).
    pub retry_backoff_ms: u64,
    /// Attempts of one message before it is marked Failed (PLUGHOST_MAIL_MAX_ATTEMPTS).
    pub max_attempts: u32,
    /// Plaintext SMTP to a host other than loopback (credentials and mail cross the
    /// network in the clear).
    pub insecure: bool,
    /// When the outgoing-mail job looks for Pending Send emails besides being woken
    /// by new ones (RRULE).
    pub recurrence: String,
    /// Connection and command timeout, in ms.
    pub timeout_ms: u64,
}

impl Default for MailSettings {
    fn default() -> Self {
        MailSettings {
            smtp: None,
            username: None,
            password: None,
            from: None,
            max_per_minute: 0,
            retry_backoff_ms: 60_000,
            max_attempts: 5,
            insecure: false,
            recurrence: "FREQ=MINUTELY".into(),
            timeout_ms: 30_000,
        }
    }
}

impl MailSettings {
    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<(), String> {
        if self.smtp.is_some() {
            Mailer::new(self)?;
        }
        if self.max_attempts == 0 {
            return Err("mail.max_attempts must be at least 1".into());
        }
        crate::recurrence::validate(&self.recurrence, crate::clock::now_ms())
            .map_err(|e| format!("mail.recurrence: {e}"))?;
        Ok(())
    }
}

/// How one delivery went.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    Sent,
    /// The server refused for now (4xx) or could not be reached: try again later.
    Transient(String),
    /// The server refused for good (5xx), or the message cannot be built.
    Permanent(String),
    /// The server could not be reached or the connection failed: nothing about
    /// this email; the queue waits.
    Unreachable(String),
}

/// The SMTP client of this process: one connection pool, and the rate limit.
pub struct Mailer {
    transport: SmtpTransport,
    settings: MailSettings,
    from: Option<Mailbox>,
    /// When the next message may go (the rate limit).
    next_slot: Mutex<Instant>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("smtp", &self.shown_url()).finish()
    }
}

impl Mailer {
    pub fn new(settings: &MailSettings) -> Result<Mailer, String> {
        let url = settings.smtp.as_deref().ok_or("mail.smtp is not set")?;
        let parsed = url::Url::parse(url).map_err(|e| format!("mail.smtp '{}' is not a URL: {e}", shown(url)))?;
        let host = parsed.host_str().ok_or_else(|| format!("mail.smtp '{}' names no host", shown(url)))?;
        let tls = parsed.scheme() == "smtps" || parsed.query_pairs().any(|(k, v)| k == "tls" && v == "required");
        match parsed.scheme() {
            "smtp" | "smtps" => {}
            other => return Err(format!("mail.smtp: unknown scheme '{other}': use smtp:// or smtps://")),
        }
        let loopback = host == "localhost"
            || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !tls && !loopback && !settings.insecure {
            return Err(format!(
                "mail.smtp '{}' is plaintext SMTP beyond loopback: use smtps:// or ?tls=required, or set mail.insecure = true",
                shown(url)
            ));
        }
        let mut builder = SmtpTransport::from_url(url).map_err(|e| format!("mail.smtp '{}': {e}", shown(url)))?;
        if let Some(user) = &settings.username {
            builder =
                builder.credentials(Credentials::new(user.clone(), settings.password.clone().unwrap_or_default()));
        }
        let transport = builder.timeout(Some(Duration::from_millis(settings.timeout_ms.max(1)))).build();
        let from = match &settings.from {
            Some(f) => Some(f.parse::<Mailbox>().map_err(|e| format!("mail.from '{f}' is not an address: {e}"))?),
            None => None,
        };
        Ok(Mailer { transport, settings: settings.clone(), from, next_slot: Mutex::new(Instant::now()) })
    }

    pub fn settings(&self) -> &MailSettings {
        &self.settings
    }

    /// The server's address, without credentials.
    pub fn shown_url(&self) -> String {
        shown(self.settings.smtp.as_deref().unwrap_or(""))
    }

    /// Waits for the rate limit's next slot; false if `stop` was set meanwhile.
    pub fn wait_turn(&self, stop: &std::sync::atomic::AtomicBool) -> bool {
        if self.settings.max_per_minute == 0 {
            return !stop.load(std::sync::atomic::Ordering::Relaxed);
        }
        let gap = Duration::from_secs(60) / self.settings.max_per_minute;
        let at = {
            let mut next = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
            let at = (*next).max(Instant::now());
            *next = at + gap;
            at
        };
        while Instant::now() < at {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep((at - Instant::now()).min(Duration::from_millis(50)));
        }
        !stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Builds the message of email `id` and sends it. The Message-ID is derived from
    /// the email's id, so a receiver can drop a second delivery of the same email.
    pub fn send(&self, id: Uuid, sender: Option<&str>, to: &str, subject: &str, body: &str) -> Delivery {
        let message = match self.message(id, sender, to, subject, body) {
            Ok(m) => m,
            Err(e) => return Delivery::Permanent(e),
        };
        match self.transport.send(&message) {
            Ok(_) => Delivery::Sent,
            Err(e) if e.is_permanent() => Delivery::Permanent(reply(&e)),
            Err(e) if e.is_transient() => Delivery::Transient(reply(&e)),
            Err(e) => Delivery::Unreachable(reply(&e)),
        }
    }

    /// The domain of the address a message from `sender` goes out from (its
    /// Message-ID's right-hand side).
    pub fn sender_domain(&self, sender: Option<&str>) -> Option<String> {
        match sender.map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) => s.parse::<Mailbox>().ok().map(|m| m.email.domain().to_owned()),
            None => self.from.as_ref().map(|m| m.email.domain().to_owned()),
        }
    }

    fn message(&self, id: Uuid, sender: Option<&str>, to: &str, subject: &str, body: &str) -> Result<Message, String> {
        let from = match sender.map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) => s.parse::<Mailbox>().map_err(|e| format!("the sender '{s}' is not an address: {e}"))?,
            None => self.from.clone().ok_or("the email has no sender and mail.from is not set")?,
        };
        let mut builder = Message::builder()
            .message_id(Some(message_id(id, from.email.domain())))
            .from(from)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for address in super::addresses(to)? {
            builder = builder.to(Mailbox::new(None, address));
        }
        builder.body(body.to_owned()).map_err(|e| format!("the message cannot be built: {e}"))
    }
}

/// The Message-ID of email `id`: `<id@domain>`.
pub fn message_id(id: Uuid, domain: &str) -> String {
    format!("<{id}@{domain}>")
}

/// The server's reply, or what went wrong on the way.
fn reply(e: &lettre::transport::smtp::Error) -> String {
    let text = e.to_string();
    match e.status() {
        Some(code) if !text.contains(&code.to_string()) => format!("{code} {text}"),
        _ => text,
    }
}

/// A URL without its password.
fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> MailSettings {
        MailSettings { smtp: Some(url.into()), ..MailSettings::default() }
    }

    #[test]
    fn plaintext_beyond_loopback_needs_insecure_and_bad_settings_are_named() {
        Mailer::new(&settings("smtp://127.0.0.1:2525")).unwrap();
        Mailer::new(&settings("smtps://mail.example.com")).unwrap();
        Mailer::new(&settings("smtp://mail.example.com:587?tls=required")).unwrap();
        let e = Mailer::new(&settings("smtp://u:secret@mail.example.com:25")).unwrap_err();
        assert!(e.contains("plaintext SMTP beyond loopback") && !e.contains("secret"), "{e}");
        Mailer::new(&MailSettings { insecure: true, ..settings("smtp://mail.example.com:25") }).unwrap();
        assert!(Mailer::new(&settings("http://x")).unwrap_err().contains("unknown scheme"));
        let bad_from = MailSettings { from: Some("nobody".into()), ..settings("smtp://127.0.0.1:25") };
        assert!(Mailer::new(&bad_from).unwrap_err().contains("mail.from"));
        assert!(MailSettings { recurrence: "FREQ=NEVER".into(), ..MailSettings::default() }.validate().is_err());
    }

    #[test]
    fn a_message_carries_its_email_id_and_refuses_bad_addresses() {
        let m = Mailer::new(&MailSettings {
            from: Some("News <news@contoso.example>".into()),
            ..settings("smtp://127.0.0.1:25")
        })
        .unwrap();
        let id = Uuid::now_v7();
        let msg = m.message(id, None, "a@example.com, b@example.com", "Hi", "Body").unwrap();
        let text = String::from_utf8(msg.formatted()).unwrap();
        assert!(text.contains(&format!("Message-ID: <{id}@contoso.example>")), "{text}");
        assert!(m.message(id, None, "nobody", "Hi", "").unwrap_err().contains("not an email address"));
        assert!(m.message(id, Some("x"), "a@example.com", "Hi", "").unwrap_err().contains("sender"));
    }
}
