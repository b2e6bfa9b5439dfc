//! Emails, sent through the SMTP relay of the settings (`lettre`): for now the password-reset
//! link. The relay URL is lettre's: `smtp://host:port` (plain, for a relay on the same machine
//! or network), `smtp://host:587?tls=required` (STARTTLS) or `smtps://user:password@host`.

use herald_model::user::User;
use herald_model::{ApiError, ErrorId};
use lettre::message::{header::ContentType, Mailbox};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::settings::ExtraSettings;

/// The reset email: the link, and the token alone for apps that take it by hand. A failure of
/// the relay is logged and answered `api-unavailable` (the detail never reaches the client).
pub async fn send_reset(s: &ExtraSettings, user: &User, link: &str, token: &str) -> Result<(), ApiError> {
    let unavailable = |detail: String| {
        tracing::error!(detail = %detail, "password-reset email not sent");
        ApiError::new(ErrorId::ApiUnavailable, "The password-reset email could not be sent; try again later.")
    };
    let from: Mailbox = s.email_from.parse().map_err(|e| unavailable(format!("email.from: {e}")))?;
    let to: Mailbox = user.email.parse().map_err(|e| unavailable(format!("recipient: {e}")))?;
    let body = format!(
        "Hello {},\r\n\r\nSomeone asked to reset the password of your account. To choose a new one, open:\r\n\r\n{link}\r\n\r\n\
         (reset token: {token})\r\n\r\nIf it was not you, ignore this email: your password stays as it is.\r\n",
        user.username
    );
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject("Reset your password")
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| unavailable(format!("message: {e}")))?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&s.smtp_url)
        .map_err(|e| unavailable(format!("email.smtp_url: {e}")))?
        .timeout(Some(std::time::Duration::from_secs(30)))
        .build();
    transport.send(message).await.map_err(|e| unavailable(format!("relay: {e}")))?;
    Ok(())
}
