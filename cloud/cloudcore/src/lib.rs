//! Wedge's `cloudcore`: what edges talk to.
