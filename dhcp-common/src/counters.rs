//! Per-CPU counters in the `COUNTERS` map: one slot per fast-path outcome.
//!
//! Every packet the XDP program looks at ends in exactly one counter, so the counters add up to
//! the traffic seen. The names are stable: they are what `xdpdhcp stats` prints and what
//! monitoring scrapes.

/// What the XDP program did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Answered in XDP (XDP_TX).
    Ack,
    /// Handed to the daemon (XDP_PASS).
    Punt,
    /// Not DHCP to our server port: passed untouched.
    Pass,
    /// Provably garbage or not ours to answer (XDP_DROP).
    Drop,
}

macro_rules! counters {
    ($($variant:ident = $name:literal, $verdict:ident, $help:literal;)*) => {
        /// Index into the `COUNTERS` per-CPU array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($variant,)*
        }

        impl Counter {
            /// Every counter, in map order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable snake_case name.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }

            /// What the XDP program did when it counted this.
            pub const fn verdict(self) -> Verdict {
                match self { $(Counter::$variant => Verdict::$verdict,)* }
            }

            /// One line for operators.
            pub const fn help(self) -> &'static str {
                match self { $(Counter::$variant => $help,)* }
            }
        }
    };
}

counters! {
    AckRenewing = "ack_renewing", Ack,
        "RENEWING request (unicast, ciaddr set) answered in XDP";
    AckRebinding = "ack_rebinding", Ack,
        "REBINDING request (broadcast or relayed, ciaddr set) answered in XDP";
    AckInitReboot = "ack_init_reboot", Ack,
        "INIT-REBOOT request (option 50, no server id) answered in XDP";

    PuntNotRequest = "punt_not_request", Punt,
        "DISCOVER, DECLINE, RELEASE, INFORM or another non-REQUEST message";
    PuntSelecting = "punt_selecting", Punt,
        "REQUEST in SELECTING state (server identifier and requested address)";
    PuntOtherServer = "punt_other_server", Punt,
        "REQUEST for another server (option 54, or unicast to an address not ours)";
    PuntNoAddress = "punt_no_address", Punt,
        "REQUEST with neither ciaddr nor option 50";
    PuntAmbiguousAddress = "punt_ambiguous_address", Punt,
        "REQUEST with both ciaddr and option 50";
    PuntUnknownLease = "punt_unknown_lease", Punt,
        "requested address not in LEASES";
    PuntChaddrMismatch = "punt_chaddr_mismatch", Punt,
        "lease belongs to another hardware address";
    PuntClientIdMismatch = "punt_client_id_mismatch", Punt,
        "client identifier (option 61) differs from the lease's";
    PuntExpired = "punt_expired", Punt,
        "lease already expired";
    PuntBeyondHorizon = "punt_beyond_horizon", Punt,
        "grantable time under the horizon is below the minimum (T1)";
    PuntWrongSubnet = "punt_wrong_subnet", Punt,
        "request arrived on a link or relay that is not the lease's subnet";
    PuntLeaseDisabled = "punt_lease_disabled", Punt,
        "the daemon reserved this lease for the slow path";
    PuntFastPathOff = "punt_fast_path_off", Punt,
        "fast path switched off by the daemon";
    PuntOverload = "punt_overload", Punt,
        "option 52 (overload): options continue in sname/file";
    PuntSplitOption = "punt_split_option", Punt,
        "option 61 or 82 split in several parts (RFC 3396)";
    PuntTooManyOptions = "punt_too_many_options", Punt,
        "option walk did not finish within its bound";
    PuntTooBig = "punt_too_big", Punt,
        "request or reply larger than the fast path handles or the client accepts";
    PuntHardwareType = "punt_hardware_type", Punt,
        "hardware type is not Ethernet (htype 1, hlen 6)";
    PuntBootp = "punt_bootp", Punt,
        "BOOTP request without DHCP magic cookie or message type";
    PuntBootReply = "punt_bootreply", Punt,
        "BOOTREPLY sent to port 67 (for a relay agent on this host)";
    PuntNoInterface = "punt_no_interface", Punt,
        "ingress interface unknown to the fast path";
    PuntNoOptionSet = "punt_no_option_set", Punt,
        "the lease's option set is missing or too large";
    PuntRingFull = "punt_ring_full", Punt,
        "RENEWALS ring buffer full: renewal cannot be reported";
    PuntNoRoom = "punt_no_room", Punt,
        "frame could not be resized for the reply";

    PassNotDhcp = "pass_not_dhcp", Pass,
        "not IPv4/UDP to port 67: untouched";
    PassIpFragment = "pass_ip_fragment", Pass,
        "IPv4 fragment: left to the kernel's reassembly";

    DropTruncated = "drop_truncated", Drop,
        "IP or UDP length larger than the frame";
    DropShortBootp = "drop_short_bootp", Drop,
        "UDP payload shorter than a BOOTP header";
    DropBadOp = "drop_bad_op", Drop,
        "BOOTP op is neither BOOTREQUEST nor BOOTREPLY";
    DropBadHlen = "drop_bad_hlen", Drop,
        "hardware address length above 16";
    DropOptionOverrun = "drop_option_overrun", Drop,
        "an option's length runs past the end of the packet";
    DropBadOption = "drop_bad_option", Drop,
        "option 50, 53, 54 or 57 with an impossible length or value";
    DropPartnerBucket = "drop_partner_bucket", Drop,
        "load balancing: client hashes to the failover partner's buckets";
    DropInternal = "drop_internal", Drop,
        "frame surgery failed half way (should never happen)";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32);
            assert!(Counter::ALL[..i].iter().all(|o| o.name() != c.name()));
        }
    }
}
