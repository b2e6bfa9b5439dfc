//! The webhook state machine (issue: webhooks). Placeholder module filled by the webhooks work.
