//! `step-counter`: the binary around [`step_counter::start`].

use clap::Parser;

/// Counts a Herald user's daily steps from webhook notifications.
#[derive(Parser, Debug)]
#[command(name = "step-counter", version)]
struct Args {
    /// Address to listen on for Herald's webhook POSTs.
    #[arg(long, env = "STEP_COUNTER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// The user's API endpoint, e.g. http://127.0.0.1:3000/alice/ (http://TOKEN@host/alice/ works too).
    #[arg(long, env = "STEP_COUNTER_API_ENDPOINT")]
    api_endpoint: String,
    /// A token that can read the count/steps events (not the one that manages the webhook).
    #[arg(long, env = "STEP_COUNTER_TOKEN", hide_env_values = true, default_value = "")]
    token: String,
    /// The webhook's secret (whsec_…), from the webhooks.create answer.
    #[arg(long, env = "STEP_COUNTER_SECRET", hide_env_values = true)]
    secret: String,
    /// Steps per UTC day that trigger the notification.
    #[arg(long, env = "STEP_COUNTER_THRESHOLD", default_value_t = 10_000)]
    threshold: i64,
    /// Where to POST {"date", "steps", "threshold"} when a day reaches the threshold (else: a log line).
    #[arg(long, env = "STEP_COUNTER_NOTIFY_URL")]
    notify_url: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let mut config = step_counter::Config::new(args.api_endpoint, args.token, args.secret, args.threshold);
    config.notify_url = args.notify_url;
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let handle = step_counter::start(listener, config).await?;
    println!("step-counter listening on {}", handle.url());
    tokio::signal::ctrl_c().await?;
    handle.shutdown();
    Ok(())
}
