//! # voxroute-loadtest: capacity and added-latency measurements
//!
//! This crate will own the load generator (N concurrent callers over the Twilio protocol, the
//! native WebSocket and WebRTC, real speech at real time) and the stand-in provider server
//! that speaks each provider's wire protocol on loopback (issues #4 and #6). Until then the
//! binary only reports that it has nothing to drive.

fn main() -> anyhow::Result<()> {
    anyhow::bail!(
        "voxroute-loadtest has no scenarios yet: the load generator arrives with the session \
         router (see the README's roadmap)"
    )
}
