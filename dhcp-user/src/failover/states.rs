//! The failover state machine (draft-ietf-dhc-failover-12 §9), with the transitions ISC dhcpd
//! 4.4 makes, so that a pair of one xdpdhcp and one dhcpd agrees on where it is.
//!
//! Pure: events in, actions out. The engine (`engine.rs`) performs the actions.

use std::fmt;

use tracing::{error, info, warn};

use super::config::Role;

/// A server's failover state, with dhcpd's numeric codes (§12.24; RECOVER-WAIT is 254 as in
/// dhcpd).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Unknown,
    Startup,
    Normal,
    CommunicationsInterrupted,
    PartnerDown,
    PotentialConflict,
    Recover,
    Paused,
    Shutdown,
    RecoverDone,
    ResolutionInterrupted,
    ConflictDone,
    RecoverWait,
}

impl State {
    pub const ALL: [State; 13] = [
        State::Unknown,
        State::Startup,
        State::Normal,
        State::CommunicationsInterrupted,
        State::PartnerDown,
        State::PotentialConflict,
        State::Recover,
        State::Paused,
        State::Shutdown,
        State::RecoverDone,
        State::ResolutionInterrupted,
        State::ConflictDone,
        State::RecoverWait,
    ];

    pub fn code(self) -> u8 {
        match self {
            State::Unknown => 0,
            State::Startup => 1,
            State::Normal => 2,
            State::CommunicationsInterrupted => 3,
            State::PartnerDown => 4,
            State::PotentialConflict => 5,
            State::Recover => 6,
            State::Paused => 7,
            State::Shutdown => 8,
            State::RecoverDone => 9,
            State::ResolutionInterrupted => 10,
            State::ConflictDone => 11,
            State::RecoverWait => 254,
        }
    }

    pub fn from_code(code: u8) -> Option<State> {
        State::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The name dhcpd prints (and we store).
    pub fn name(self) -> &'static str {
        match self {
            State::Unknown => "unknown-state",
            State::Startup => "startup",
            State::Normal => "normal",
            State::CommunicationsInterrupted => "communications-interrupted",
            State::PartnerDown => "partner-down",
            State::PotentialConflict => "potential-conflict",
            State::Recover => "recover",
            State::Paused => "paused",
            State::Shutdown => "shutdown",
            State::RecoverDone => "recover-done",
            State::ResolutionInterrupted => "resolution-interrupted",
            State::ConflictDone => "conflict-done",
            State::RecoverWait => "recover-wait",
        }
    }

    pub fn parse(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the server does for clients, following from both states (dhcpd's "service state").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// NORMAL: answer the clients of our hash buckets.
    Cooperating,
    /// COMMUNICATIONS-INTERRUPTED: answer everyone, from our own free addresses.
    NotCooperating,
    /// PARTNER-DOWN: answer everyone; the partner's addresses become ours after MCLT.
    PartnerDown,
    /// Recovering, resolving conflicts, paused, shut down or starting up: answer nobody.
    NotResponding(&'static str),
}

impl Service {
    pub fn responds(self) -> bool {
        !matches!(self, Service::NotResponding(_))
    }

    pub fn describe(self) -> String {
        match self {
            Service::Cooperating => "cooperating (load balanced)".into(),
            Service::NotCooperating => "serving all clients from its own addresses".into(),
            Service::PartnerDown => "serving all clients (partner down)".into(),
            Service::NotResponding(why) => format!("not responding ({why})"),
        }
    }
}

/// Side effects of a transition, for the engine to perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Tell the partner our state (STATE message).
    SendState,
    /// Write the states to the lease store.
    Persist,
    /// Entering NORMAL: give the secondary its share of free addresses (primary), queue every
    /// update the partner has not acknowledged, and send.
    EnterNormal,
    /// Ask the partner for the updates we have not seen (UPDREQ).
    RequestUpdates,
    /// Ask the partner for every binding it has (UPDREQALL: our store may be gone).
    RequestAllUpdates,
    /// Ownership of addresses changed (partner-down and back): re-evaluate what is ours.
    OwnershipChanged,
}

/// Both servers' states and when they were entered, as persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub role: Role,
    pub me: State,
    /// Start time of our state (unix seconds).
    pub my_stos: u64,
    pub partner: State,
    pub partner_stos: u64,
    /// The state STARTUP will return to.
    pub saved: State,
    pub mclt: u32,
}

impl Machine {
    /// A server that has never talked to its partner starts in RECOVER (as dhcpd does): it
    /// must learn the partner's bindings before serving.
    pub fn new(role: Role, mclt: u32, now: u64) -> Machine {
        Machine {
            role,
            me: State::Recover,
            my_stos: now,
            partner: State::Unknown,
            partner_stos: 0,
            saved: State::Recover,
            mclt,
        }
    }

    /// The state that counts when we are in STARTUP.
    pub fn effective(&self) -> State {
        if self.me == State::Startup {
            self.saved
        } else {
            self.me
        }
    }

    pub fn service(&self) -> Service {
        let mine = match self.me {
            State::Normal => Service::Cooperating,
            State::CommunicationsInterrupted => Service::NotCooperating,
            State::PartnerDown => Service::PartnerDown,
            State::Unknown => Service::NotResponding("my state unknown"),
            State::ResolutionInterrupted | State::PotentialConflict | State::ConflictDone => {
                Service::NotResponding("resolving conflicts")
            }
            State::Recover => Service::NotResponding("recovering"),
            State::Shutdown => Service::NotResponding("shut down"),
            State::Paused => Service::NotResponding("paused"),
            State::RecoverWait => Service::NotResponding("recover wait"),
            State::RecoverDone => Service::NotResponding("recover done"),
            State::Startup => Service::NotResponding("startup"),
        };
        if !mine.responds() {
            return mine;
        }
        match self.partner {
            State::PartnerDown => Service::NotResponding("peer demands: recovering"),
            State::PotentialConflict | State::ConflictDone | State::ResolutionInterrupted => {
                Service::NotResponding("peer demands: resolving conflicts")
            }
            _ => mine,
        }
    }

    /// Enters `new`; returns the side effects. (dhcpd `dhcp_failover_set_state`.)
    pub fn set(&mut self, new: State, connected: bool, now: u64) -> Vec<Action> {
        let old = self.me;
        // STOS is kept across STARTUP and into RECOVER-WAIT (the MCLT wait counts from RECOVER).
        if new != State::RecoverWait && new != State::Startup && old != State::Startup {
            self.my_stos = now;
        }
        if new == State::Startup && old != State::Startup {
            self.saved = old;
        }
        self.me = new;
        info!("failover: I move from {old} to {new}");
        if self.me == State::Normal && self.partner == State::Normal {
            info!("failover: both servers normal");
        }
        let mut actions = vec![Action::Persist];
        if connected {
            actions.push(Action::SendState);
        }
        match new {
            State::Normal => actions.push(Action::EnterNormal),
            State::PotentialConflict if self.role == Role::Primary => {
                actions.push(Action::RequestUpdates)
            }
            State::Recover if connected => actions.push(Action::RequestAllUpdates),
            _ => {}
        }
        if old == State::PartnerDown || new == State::PartnerDown {
            actions.push(Action::OwnershipChanged);
        }
        actions
    }

    /// Start-up: STARTUP until the partner tells us its state (or 15 s pass).
    pub fn startup(&mut self, now: u64) -> Vec<Action> {
        self.set(State::Startup, false, now)
    }

    /// The link to the partner went down (or never came up during STARTUP).
    pub fn disconnected(&mut self, now: u64) -> Vec<Action> {
        match self.effective() {
            State::PotentialConflict | State::Unknown => {
                self.set(State::ResolutionInterrupted, false, now)
            }
            State::Normal => self.set(State::CommunicationsInterrupted, false, now),
            saved if self.me == State::Startup => self.set(saved, false, now),
            _ => vec![],
        }
    }

    /// The partner told us its state (STATE message). dhcpd
    /// `dhcp_failover_peer_state_changed`.
    pub fn peer_state(
        &mut self,
        new: State,
        stos: u64,
        partner_starting: bool,
        now: u64,
    ) -> Vec<Action> {
        let previous = self.partner;
        let mut actions = vec![];
        if previous == new && self.me != State::Unknown {
            match self.me {
                State::Startup => {
                    let saved = self.saved;
                    return self.set(saved, true, now);
                }
                State::PartnerDown
                | State::CommunicationsInterrupted
                | State::ResolutionInterrupted
                | State::Recover
                | State::ConflictDone => {}
                _ => return vec![],
            }
        }
        self.partner = new;
        self.partner_stos = stos;
        info!("failover: peer moves from {previous} to {new}");
        actions.push(Action::Persist);
        let connected = true;
        let mut go = |m: &mut Machine, s: State| actions.extend(m.set(s, connected, now));
        match self.effective() {
            State::Normal => match new {
                State::PartnerDown => {
                    let next = if self.me == State::Startup {
                        State::Recover
                    } else {
                        State::PotentialConflict
                    };
                    go(self, next)
                }
                State::PotentialConflict | State::ResolutionInterrupted | State::ConflictDone => {
                    error!("failover: partner made an invalid transition {previous} to {new}");
                    go(self, State::Shutdown)
                }
                State::Recover | State::Shutdown => go(self, State::PartnerDown),
                State::Paused => go(self, State::CommunicationsInterrupted),
                _ => {}
            },
            State::Recover => match new {
                State::Recover | State::PartnerDown | State::CommunicationsInterrupted
                    if self.me == State::Recover =>
                {
                    actions.push(Action::RequestAllUpdates)
                }
                State::PotentialConflict
                | State::ResolutionInterrupted
                | State::ConflictDone
                | State::Normal => go(self, State::PotentialConflict),
                State::Shutdown => go(self, State::PartnerDown),
                _ => {}
            },
            State::PotentialConflict => match new {
                State::Normal => {
                    error!("failover: partner moves to normal during conflict resolution");
                    go(self, State::Shutdown)
                }
                State::ConflictDone if previous == State::PotentialConflict => {
                    actions.push(Action::RequestUpdates)
                }
                State::ConflictDone => warn!("failover: unexpected partner move to conflict-done"),
                State::Recover => go(self, State::Recover),
                State::Shutdown => go(self, State::PartnerDown),
                _ => {}
            },
            State::ConflictDone => match new {
                State::Normal | State::Shutdown => go(self, new),
                _ => error!(
                    "failover: partner moves from {previous} to {new} while we are in conflict-done"
                ),
            },
            State::PartnerDown if !partner_starting => match new {
                State::RecoverDone => go(self, State::Normal),
                State::Normal
                | State::PotentialConflict
                | State::PartnerDown
                | State::CommunicationsInterrupted
                | State::ResolutionInterrupted
                | State::ConflictDone => go(self, State::PotentialConflict),
                _ => {}
            },
            State::CommunicationsInterrupted => match new {
                // An amnesiac partner: it must recover from us.
                State::Recover => go(self, State::PartnerDown),
                State::Normal
                | State::CommunicationsInterrupted
                | State::RecoverDone
                | State::RecoverWait => go(self, State::Normal),
                State::PotentialConflict
                | State::PartnerDown
                | State::ResolutionInterrupted
                | State::ConflictDone => go(self, State::PotentialConflict),
                State::Shutdown => go(self, State::PartnerDown),
                _ => {}
            },
            State::ResolutionInterrupted => match new {
                State::Shutdown => go(self, State::PartnerDown),
                State::Paused | State::Unknown | State::Startup => {}
                _ => go(self, State::PotentialConflict),
            },
            State::RecoverDone => match new {
                State::RecoverDone | State::Normal => {
                    if new == State::RecoverDone {
                        warn!("failover: both servers have entered recover-done");
                    }
                    go(self, State::Normal)
                }
                State::Shutdown => go(self, State::PartnerDown),
                _ => {}
            },
            _ => {}
        }
        if self.me == State::Startup && self.saved != State::Startup {
            let saved = self.saved;
            actions.extend(self.set(saved, true, now));
        }
        actions
    }

    /// The partner finished sending what we asked for (UPDDONE). dhcpd
    /// `dhcp_failover_process_update_done`.
    pub fn update_done(&mut self, now: u64) -> Vec<Action> {
        match self.me {
            State::PotentialConflict => {
                if self.partner == State::ConflictDone {
                    if self.role == Role::Secondary {
                        self.set(State::Normal, true, now)
                    } else {
                        error!("failover: secondary is in conflict-done, which is illegal");
                        self.set(State::Shutdown, true, now)
                    }
                } else if self.role == Role::Primary {
                    self.set(State::ConflictDone, true, now)
                } else {
                    warn!("failover: spurious update-done");
                    vec![]
                }
            }
            State::Recover => {
                // Both new (both recovering): nothing can be outstanding, no MCLT wait.
                if self.my_stos + u64::from(self.mclt) > now
                    && self.partner != State::Recover
                    && self.partner != State::RecoverDone
                {
                    self.set(State::RecoverWait, true, now)
                } else {
                    self.set(State::RecoverDone, true, now)
                }
            }
            _ => vec![],
        }
    }

    /// Time-driven transitions: RECOVER-WAIT ends after MCLT; automatic partner-down.
    pub fn tick(&mut self, connected: bool, auto_partner_down: u32, now: u64) -> Vec<Action> {
        match self.me {
            State::RecoverWait if now >= self.my_stos + u64::from(self.mclt) => {
                self.set(State::RecoverDone, connected, now)
            }
            State::CommunicationsInterrupted
                if auto_partner_down > 0 && now >= self.my_stos + u64::from(auto_partner_down) =>
            {
                warn!(
                    "failover: no contact with the partner for {auto_partner_down} s: entering partner-down automatically"
                );
                self.set(State::PartnerDown, connected, now)
            }
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(now: u64) -> (Machine, Machine) {
        (
            Machine::new(Role::Primary, 60, now),
            Machine::new(Role::Secondary, 60, now),
        )
    }

    /// Delivers each side's state to the other until nothing changes (as STATE messages would).
    fn exchange(a: &mut Machine, b: &mut Machine, now: u64) {
        for _ in 0..10 {
            let (sa, sb) = (a.effective(), b.effective());
            a.peer_state(sb, b.my_stos, b.me == State::Startup, now);
            b.peer_state(sa, a.my_stos, a.me == State::Startup, now);
            if a.effective() == sa && b.effective() == sb {
                return;
            }
        }
    }

    #[test]
    fn codes_round_trip() {
        for s in State::ALL {
            assert_eq!(State::from_code(s.code()), Some(s));
            assert_eq!(State::parse(s.name()), Some(s));
        }
    }

    #[test]
    fn a_new_pair_recovers_without_waiting_mclt_and_reaches_normal() {
        let (mut p, mut s) = pair(1000);
        p.startup(1000);
        s.startup(1000);
        exchange(&mut p, &mut s, 1001);
        assert_eq!((p.me, s.me), (State::Recover, State::Recover));
        // Each asked for all updates and got UPDDONE.
        p.update_done(1002);
        s.update_done(1002);
        assert_eq!((p.me, s.me), (State::RecoverDone, State::RecoverDone));
        exchange(&mut p, &mut s, 1003);
        assert_eq!((p.me, s.me), (State::Normal, State::Normal));
        assert_eq!(p.service(), Service::Cooperating);
    }

    #[test]
    fn losing_contact_interrupts_and_regaining_it_returns_to_normal() {
        let (mut p, mut s) = pair(1000);
        p.me = State::Normal;
        s.me = State::Normal;
        p.partner = State::Normal;
        s.partner = State::Normal;
        p.disconnected(2000);
        s.disconnected(2000);
        assert_eq!(p.me, State::CommunicationsInterrupted);
        assert_eq!(p.service(), Service::NotCooperating);
        exchange(&mut p, &mut s, 3000);
        assert_eq!((p.me, s.me), (State::Normal, State::Normal));
    }

    #[test]
    fn partner_down_then_the_partner_recovers_from_us() {
        let (mut p, _) = pair(1000);
        p.me = State::CommunicationsInterrupted;
        let actions = p.set(State::PartnerDown, false, 2000);
        assert!(actions.contains(&Action::OwnershipChanged));
        assert_eq!(p.service(), Service::PartnerDown);
        // The secondary lost its disk: it comes back in RECOVER.
        let mut s = Machine::new(Role::Secondary, 60, 3000);
        s.startup(3000);
        exchange(&mut p, &mut s, 3001);
        assert_eq!(s.me, State::Recover);
        assert_eq!(p.me, State::PartnerDown);
        assert!(!s.service().responds());
        // The partner is in partner-down: the recovering server waits MCLT.
        s.update_done(3002);
        assert_eq!(s.me, State::RecoverWait);
        s.tick(true, 0, 3002 + 30);
        assert_eq!(s.me, State::RecoverWait);
        s.tick(true, 0, 3001 + 61);
        assert_eq!(s.me, State::RecoverDone);
        exchange(&mut p, &mut s, 3100);
        assert_eq!((p.me, s.me), (State::Normal, State::Normal));
    }

    #[test]
    fn both_partner_down_resolve_potential_conflict() {
        let (mut p, mut s) = pair(1000);
        p.me = State::PartnerDown;
        s.me = State::PartnerDown;
        exchange(&mut p, &mut s, 2000);
        assert_eq!(
            (p.me, s.me),
            (State::PotentialConflict, State::PotentialConflict)
        );
        assert!(!p.service().responds());
        // Primary asked (UPDREQ), the secondary sent its updates and UPDDONE.
        p.update_done(2001);
        assert_eq!(p.me, State::ConflictDone);
        let a = s.peer_state(State::ConflictDone, 2001, false, 2001);
        assert!(a.contains(&Action::RequestUpdates));
        s.update_done(2002);
        assert_eq!(s.me, State::Normal);
        p.peer_state(State::Normal, 2002, false, 2002);
        assert_eq!(p.me, State::Normal);
    }

    #[test]
    fn startup_returns_to_the_saved_state() {
        let (mut p, _) = pair(1000);
        p.me = State::Normal;
        p.startup(2000);
        assert_eq!(p.effective(), State::Normal);
        assert!(!p.service().responds());
        // No partner within the start-up time: as if the link went down.
        p.disconnected(2015);
        assert_eq!(p.me, State::CommunicationsInterrupted);
    }

    #[test]
    fn automatic_partner_down() {
        let (mut p, _) = pair(1000);
        p.me = State::Normal;
        p.disconnected(2000);
        p.tick(false, 0, 9999);
        assert_eq!(p.me, State::CommunicationsInterrupted);
        p.tick(false, 30, 2029);
        assert_eq!(p.me, State::CommunicationsInterrupted);
        p.tick(false, 30, 2030);
        assert_eq!(p.me, State::PartnerDown);
    }
}
