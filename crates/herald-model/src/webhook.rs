//! Webhooks (issue: webhooks). Placeholder module filled by the webhooks work.
