//! The TOML configuration: schema, validation with line numbers, and the resolved form the
//! daemon uses. `xdpdhcp check-config FILE` prints every error found, each with its line.

pub mod options;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::Ipv4Addr,
    ops::Range,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;

use self::options::OptionType;
use crate::failover::{
    self,
    config::{FailoverConfig, Role},
};

pub const DEFAULT_LEASE_TIME: u32 = 3600;
pub const DEFAULT_MIN_LEASE_TIME: u32 = 300;
pub const DEFAULT_MAX_LEASE_TIME: u32 = 86400;

/// A problem in the configuration, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// All problems found, in file order.
#[derive(Debug)]
pub struct ConfigErrors {
    pub origin: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{} in the configuration",
            self.origin,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  {}:{e}", self.origin)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------------------------
// Raw schema (what the file says).

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawConfig {
    server_id: Option<Spanned<String>>,
    interfaces: Spanned<Vec<Spanned<String>>>,
    lease_store: Option<String>,
    control_socket: Option<String>,
    bpffs_dir: Option<String>,
    #[serde(default = "yes")]
    authoritative: bool,
    #[serde(default)]
    deny_unknown_clients: bool,
    xdp_mode: Option<Spanned<String>>,
    #[serde(default = "yes")]
    fast_path: bool,
    /// Extra time stored beyond each lease, as a percentage of the lease time.
    fast_path_headroom: Option<Spanned<u32>>,
    offer_timeout: Option<Spanned<u32>>,
    decline_probation: Option<Spanned<u32>>,
    default_lease_time: Option<Spanned<u32>>,
    min_lease_time: Option<Spanned<u32>>,
    max_lease_time: Option<Spanned<u32>>,
    #[serde(default)]
    options: RawOptions,
    #[serde(default)]
    custom_option: Vec<Spanned<RawCustomOption>>,
    #[serde(default)]
    always_send: Vec<Spanned<String>>,
    #[serde(default)]
    subnet: Vec<Spanned<RawSubnet>>,
    #[serde(default)]
    reservation: Vec<Spanned<RawReservation>>,
    failover: Option<Spanned<RawFailover>>,
}

/// `[options]` tables: option name → value, each with its position.
type RawOptions = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawSubnet {
    subnet: Spanned<String>,
    interface: Option<Spanned<String>>,
    vlan: Option<Spanned<u16>>,
    inner_vlan: Option<Spanned<u16>>,
    #[serde(default)]
    relay_addresses: Vec<Spanned<String>>,
    shared_network: Option<String>,
    server_id: Option<Spanned<String>>,
    #[serde(default)]
    pools: Vec<Spanned<RawPool>>,
    default_lease_time: Option<Spanned<u32>>,
    min_lease_time: Option<Spanned<u32>>,
    max_lease_time: Option<Spanned<u32>>,
    renew_time: Option<Spanned<u32>>,
    rebind_time: Option<Spanned<u32>>,
    #[serde(default)]
    options: RawOptions,
    #[serde(default)]
    custom_option: Vec<Spanned<RawCustomOption>>,
    #[serde(default)]
    always_send: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawFailover {
    name: Option<Spanned<String>>,
    role: Spanned<String>,
    address: Spanned<String>,
    port: Option<Spanned<u16>>,
    peer_address: Spanned<String>,
    peer_port: Option<Spanned<u16>>,
    mclt: Option<Spanned<u32>>,
    max_response_delay: Option<Spanned<u32>>,
    max_unacked_updates: Option<Spanned<u32>>,
    split: Option<Spanned<u32>>,
    hba: Option<Spanned<String>>,
    load_balance_max_seconds: Option<Spanned<u16>>,
    auto_partner_down: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    start: Spanned<String>,
    end: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawCustomOption {
    code: Spanned<u8>,
    #[serde(rename = "type")]
    ty: Spanned<String>,
    value: Spanned<toml::Value>,
    #[serde(default)]
    always_send: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawReservation {
    hw_address: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    ip_address: Spanned<String>,
    hostname: Option<String>,
    #[serde(default)]
    options: RawOptions,
    #[serde(default)]
    custom_option: Vec<Spanned<RawCustomOption>>,
}

// ---------------------------------------------------------------------------------------------
// Resolved configuration.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModeSetting {
    /// Driver (native) mode, falling back to generic if the driver lacks XDP.
    Auto,
    Native,
    Generic,
    /// No XDP: every packet goes to the daemon.
    Off,
}

/// One configured option value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionValue {
    pub code: u8,
    pub value: Vec<u8>,
    /// Sent even when the client does not ask for it.
    pub always_send: bool,
}

/// Options keyed by code; later scopes override earlier ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptionList(pub BTreeMap<u8, OptionValue>);

impl OptionList {
    pub fn merged(&self, over: &OptionList) -> OptionList {
        let mut m = self.0.clone();
        m.extend(over.0.iter().map(|(k, v)| (*k, v.clone())));
        OptionList(m)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTimes {
    pub default: u32,
    pub min: u32,
    pub max: u32,
    /// T1 and T2; `None`: 50 % and 87.5 % of the granted lease (RFC 2131 §4.4.5).
    pub renew: Option<u32>,
    pub rebind: Option<u32>,
}

impl LeaseTimes {
    /// Lease time for a client that asked for `requested` seconds (option 51), if any.
    pub fn grant(&self, requested: Option<u32>) -> u32 {
        requested.map_or(self.default, |r| r.clamp(self.min, self.max))
    }

    /// T1 and T2 for a lease of `lease` seconds.
    pub fn timers(&self, lease: u32) -> (u32, u32) {
        let t1 = self.renew.filter(|t| *t < lease).unwrap_or(lease / 2);
        let t2 = self
            .rebind
            .filter(|t| *t < lease && *t > t1)
            .unwrap_or(lease - lease / 8);
        (t1, t2.max(t1))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Pool {
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        self.start <= a && a <= self.end
    }

    /// Number of addresses.
    pub fn size(&self) -> u64 {
        u64::from(u32::from(self.end) - u32::from(self.start)) + 1
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// Index in `Config::subnets` (and in the fast path's SUBNETS map).
    pub id: u16,
    pub net: Ipv4Net,
    /// The link (shared network) this subnet lives on: subnets on one link share clients.
    pub link: u32,
    pub interface: Option<String>,
    pub vlan: u16,
    pub inner_vlan: u16,
    pub relay_addresses: Vec<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub pools: Vec<Pool>,
    pub lease: LeaseTimes,
    /// Global options merged with the subnet's (subnet mask and broadcast filled in).
    pub options: OptionList,
}

impl Subnet {
    pub fn in_pool(&self, a: Ipv4Addr) -> bool {
        self.pools.iter().any(|p| p.contains(a))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientMatch {
    HwAddress([u8; 6]),
    ClientId(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub client: ClientMatch,
    pub address: Ipv4Addr,
    pub hostname: Option<String>,
    pub options: OptionList,
    /// The subnet the address belongs to.
    pub subnet: u16,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub server_id: Option<Ipv4Addr>,
    pub interfaces: Vec<String>,
    pub lease_store: PathBuf,
    pub control_socket: PathBuf,
    pub bpffs_dir: PathBuf,
    pub authoritative: bool,
    pub deny_unknown_clients: bool,
    pub xdp_mode: XdpModeSetting,
    pub fast_path: bool,
    pub fast_path_headroom_percent: u32,
    pub offer_timeout: u32,
    pub decline_probation: u32,
    pub subnets: Vec<Subnet>,
    pub reservations: Vec<Reservation>,
    /// `[failover]`: this server has a partner.
    pub failover: Option<FailoverConfig>,
}

impl Config {
    /// Total number of pool addresses (sizes the fast path's LEASES map).
    pub fn pool_size(&self) -> u64 {
        self.subnets
            .iter()
            .flat_map(|s| &s.pools)
            .map(Pool::size)
            .sum::<u64>()
            + self.reservations.len() as u64
    }

    pub fn subnet_of(&self, a: Ipv4Addr) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.net.contains(&a))
    }
}

// ---------------------------------------------------------------------------------------------
// Loading and validation.

pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        origin: origin.clone(),
        errors: vec![ConfigError {
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse(&text, &origin)
}

pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let mut v = Validator {
        text,
        errors: vec![],
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            v.error(e.span().unwrap_or(0..0), e.message().to_string());
            return Err(v.finish(origin));
        }
    };
    let config = v.resolve(raw);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(v.finish(origin))
    }
}

struct Validator<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        self.errors.push(ConfigError {
            line,
            column,
            message: message.into(),
        });
    }

    fn finish(mut self, origin: &str) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors {
            origin: origin.to_string(),
            errors: self.errors,
        }
    }

    fn ip(&mut self, s: &Spanned<String>) -> Option<Ipv4Addr> {
        match s.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    s.span(),
                    format!("`{}` is not an IPv4 address", s.get_ref()),
                );
                None
            }
        }
    }

    fn resolve(&mut self, raw: RawConfig) -> Config {
        let server_id = raw.server_id.as_ref().and_then(|s| self.ip(s));
        if raw.interfaces.get_ref().is_empty() {
            self.error(
                raw.interfaces.span(),
                "`interfaces` is empty: name at least one interface to serve on",
            );
        }
        let interfaces: Vec<String> = raw
            .interfaces
            .get_ref()
            .iter()
            .map(|s| s.get_ref().clone())
            .collect();
        for iface in raw.interfaces.get_ref() {
            if iface.get_ref().is_empty() || iface.get_ref().len() >= libc::IFNAMSIZ {
                self.error(
                    iface.span(),
                    format!("`{}` is not a valid interface name", iface.get_ref()),
                );
            }
        }
        let xdp_mode = match raw.xdp_mode.as_ref().map(|m| m.get_ref().as_str()) {
            None | Some("auto") => XdpModeSetting::Auto,
            Some("native") => XdpModeSetting::Native,
            Some("generic") => XdpModeSetting::Generic,
            Some("off") => XdpModeSetting::Off,
            Some(other) => {
                let span = raw.xdp_mode.as_ref().expect("matched Some").span();
                self.error(
                    span,
                    format!("xdp-mode `{other}`: expected auto, native, generic or off"),
                );
                XdpModeSetting::Auto
            }
        };
        let global_times = self.lease_times(
            &raw.default_lease_time,
            &raw.min_lease_time,
            &raw.max_lease_time,
            &None,
            &None,
            None,
        );
        let global_options = self.options(&raw.options, &raw.custom_option, &raw.always_send);

        // Subnets.
        let mut subnets: Vec<Subnet> = vec![];
        let mut links: HashMap<String, u32> = HashMap::new();
        for (i, s) in raw.subnet.iter().enumerate() {
            let span = s.span();
            let s = s.get_ref();
            let Ok(net) = s.subnet.get_ref().parse::<Ipv4Net>() else {
                self.error(
                    s.subnet.span(),
                    format!("`{}` is not a subnet like 10.0.0.0/24", s.subnet.get_ref()),
                );
                continue;
            };
            if net.network() != net.addr() {
                self.error(
                    s.subnet.span(),
                    format!(
                        "subnet {net} has host bits set; did you mean {}?",
                        net.trunc()
                    ),
                );
            }
            if net.prefix_len() > 30 {
                self.error(
                    s.subnet.span(),
                    format!("subnet {net} is too small to serve clients"),
                );
            }
            if let Some(other) = subnets
                .iter()
                .find(|o| o.net.contains(&net.network()) || net.contains(&o.net.network()))
            {
                self.error(
                    s.subnet.span(),
                    format!("subnet {net} overlaps subnet {}", other.net),
                );
            }
            if i >= dhcp_common::MAX_SUBNETS as usize {
                self.error(
                    span.clone(),
                    format!("more than {} subnets", dhcp_common::MAX_SUBNETS),
                );
            }
            let interface = s.interface.as_ref().map(|i| i.get_ref().clone());
            if let Some(iface) = &s.interface
                && !interfaces.contains(iface.get_ref())
            {
                self.error(
                    iface.span(),
                    format!(
                        "interface `{}` is not listed in `interfaces`",
                        iface.get_ref()
                    ),
                );
            }
            for vlan in [&s.vlan, &s.inner_vlan].into_iter().flatten() {
                if *vlan.get_ref() == 0 || *vlan.get_ref() > 4094 {
                    self.error(
                        vlan.span(),
                        format!("VLAN id {} is outside 1..=4094", vlan.get_ref()),
                    );
                }
            }
            if let (Some(inner), None) = (&s.inner_vlan, &s.vlan) {
                self.error(inner.span(), "inner-vlan needs vlan (the outer tag)");
            }
            let relay_addresses: Vec<Ipv4Addr> = s
                .relay_addresses
                .iter()
                .filter_map(|r| self.ip(r))
                .collect();
            if s.interface.is_none() && s.relay_addresses.is_empty() && s.shared_network.is_none() {
                // Relayed subnets are found by giaddr inside the subnet: fine without either.
            }
            let subnet_server_id = s.server_id.as_ref().and_then(|a| self.ip(a));
            let link_name = s
                .shared_network
                .clone()
                .or_else(|| {
                    interface.as_ref().map(|i| {
                        format!(
                            "interface:{i}:{}:{}",
                            s.vlan.as_ref().map_or(0, |v| *v.get_ref()),
                            s.inner_vlan.as_ref().map_or(0, |v| *v.get_ref())
                        )
                    })
                })
                .unwrap_or_else(|| format!("subnet:{net}"));
            let next_link = links.len() as u32 + 1;
            let link = *links.entry(link_name).or_insert(next_link);

            let mut pools = vec![];
            for p in &s.pools {
                let (Some(start), Some(end)) =
                    (self.ip(&p.get_ref().start), self.ip(&p.get_ref().end))
                else {
                    continue;
                };
                if start > end {
                    self.error(
                        p.span(),
                        format!("pool {start}-{end} ends before it starts"),
                    );
                    continue;
                }
                if !net.contains(&start) || !net.contains(&end) {
                    self.error(
                        p.span(),
                        format!("pool {start}-{end} is not inside subnet {net}"),
                    );
                    continue;
                }
                if start == net.network() || end == net.broadcast() {
                    self.error(
                        p.span(),
                        format!(
                            "pool {start}-{end} includes the network or broadcast address of {net}"
                        ),
                    );
                    continue;
                }
                let pool = Pool { start, end };
                if let Some(other) = pools.iter().find(|o: &&Pool| {
                    o.contains(start) || o.contains(end) || pool.contains(o.start)
                }) {
                    self.error(
                        p.span(),
                        format!(
                            "pool {start}-{end} overlaps pool {}-{}",
                            other.start, other.end
                        ),
                    );
                    continue;
                }
                pools.push(pool);
            }
            let lease = self.lease_times(
                &s.default_lease_time,
                &s.min_lease_time,
                &s.max_lease_time,
                &s.renew_time,
                &s.rebind_time,
                Some(&global_times),
            );
            let mut options =
                global_options.merged(&self.options(&s.options, &s.custom_option, &s.always_send));
            options.0.entry(1).or_insert(OptionValue {
                code: 1,
                value: net.netmask().octets().to_vec(),
                always_send: true,
            });
            options.0.entry(28).or_insert(OptionValue {
                code: 28,
                value: net.broadcast().octets().to_vec(),
                always_send: false,
            });
            subnets.push(Subnet {
                id: subnets.len() as u16,
                net,
                link,
                interface,
                vlan: s.vlan.as_ref().map_or(0, |v| *v.get_ref()),
                inner_vlan: s.inner_vlan.as_ref().map_or(0, |v| *v.get_ref()),
                relay_addresses,
                server_id: subnet_server_id,
                pools,
                lease,
                options,
            });
        }

        // Reservations.
        let mut reservations = vec![];
        let mut seen_clients = HashSet::new();
        let mut seen_addresses = HashSet::new();
        for r in &raw.reservation {
            let span = r.span();
            let r = r.get_ref();
            let client = match (&r.hw_address, &r.client_id) {
                (Some(hw), None) => match parse_mac(hw.get_ref()) {
                    Some(mac) => ClientMatch::HwAddress(mac),
                    None => {
                        self.error(
                            hw.span(),
                            format!(
                                "`{}` is not a MAC address like aa:bb:cc:dd:ee:ff",
                                hw.get_ref()
                            ),
                        );
                        continue;
                    }
                },
                (None, Some(id)) => match options::parse_hex(id.get_ref()) {
                    Ok(bytes) if bytes.len() >= 2 => ClientMatch::ClientId(bytes),
                    Ok(_) => {
                        self.error(
                            id.span(),
                            "a client identifier has at least 2 bytes (RFC 2132 §9.14)",
                        );
                        continue;
                    }
                    Err(e) => {
                        self.error(id.span(), e);
                        continue;
                    }
                },
                _ => {
                    self.error(
                        span.clone(),
                        "a reservation needs exactly one of hw-address and client-id",
                    );
                    continue;
                }
            };
            let Some(address) = self.ip(&r.ip_address) else {
                continue;
            };
            let Some(subnet) = subnets.iter().find(|s| s.net.contains(&address)) else {
                self.error(
                    r.ip_address.span(),
                    format!("reserved address {address} is in no configured subnet"),
                );
                continue;
            };
            if address == subnet.net.network() || address == subnet.net.broadcast() {
                self.error(
                    r.ip_address.span(),
                    format!(
                        "{address} is the network or broadcast address of {}",
                        subnet.net
                    ),
                );
                continue;
            }
            if !seen_clients.insert(client.clone()) {
                self.error(span.clone(), "this client already has a reservation");
            }
            if !seen_addresses.insert(address) {
                self.error(r.ip_address.span(), format!("{address} is reserved twice"));
            }
            let options = self.options(&r.options, &r.custom_option, &[]);
            reservations.push(Reservation {
                client,
                address,
                hostname: r.hostname.clone(),
                options,
                subnet: subnet.id,
            });
        }

        let percent =
            |v: &Option<Spanned<u32>>, default: u32| v.as_ref().map_or(default, |v| *v.get_ref());
        if let Some(h) = &raw.fast_path_headroom
            && *h.get_ref() > 1000
        {
            self.error(
                h.span(),
                "fast-path-headroom is a percentage of the lease time, at most 1000",
            );
        }
        Config {
            server_id,
            interfaces,
            lease_store: PathBuf::from(
                raw.lease_store
                    .unwrap_or_else(|| "/var/lib/xdpdhcp/leases.db".into()),
            ),
            control_socket: PathBuf::from(
                raw.control_socket
                    .unwrap_or_else(|| "/run/xdpdhcp/control.sock".into()),
            ),
            bpffs_dir: PathBuf::from(
                raw.bpffs_dir
                    .unwrap_or_else(|| "/sys/fs/bpf/xdpdhcp".into()),
            ),
            authoritative: raw.authoritative,
            deny_unknown_clients: raw.deny_unknown_clients,
            xdp_mode,
            fast_path: raw.fast_path,
            fast_path_headroom_percent: percent(&raw.fast_path_headroom, 100),
            offer_timeout: percent(&raw.offer_timeout, 60),
            decline_probation: percent(&raw.decline_probation, 86400),
            subnets,
            reservations,
            failover: raw.failover.as_ref().and_then(|f| self.failover(f)),
        }
    }

    fn failover(&mut self, raw: &Spanned<RawFailover>) -> Option<FailoverConfig> {
        let span = raw.span();
        let f = raw.get_ref();
        let role = match f.role.get_ref().as_str() {
            "primary" => Role::Primary,
            "secondary" => Role::Secondary,
            other => {
                self.error(
                    f.role.span(),
                    format!("failover role `{other}`: expected primary or secondary"),
                );
                return None;
            }
        };
        let address = self.ip(&f.address);
        let peer_address = self.ip(&f.peer_address);
        let name = f
            .name
            .as_ref()
            .map_or("dhcp-failover".to_string(), |n| n.get_ref().clone());
        if name.is_empty() || name.len() > 255 {
            let at = f.name.as_ref().map_or(span.clone(), |n| n.span());
            self.error(at, "failover name must be 1 to 255 characters");
        }
        let get = |v: &Option<Spanned<u32>>, d: u32| v.as_ref().map_or(d, |v| *v.get_ref());
        let mclt = get(&f.mclt, failover::DEFAULT_MCLT);
        if mclt == 0 {
            let at = f.mclt.as_ref().map_or(span.clone(), |v| v.span());
            self.error(at, "mclt must be at least 1 second");
        }
        let max_response_delay = get(&f.max_response_delay, failover::DEFAULT_MAX_RESPONSE_DELAY);
        if max_response_delay < 3 {
            let at = f
                .max_response_delay
                .as_ref()
                .map_or(span.clone(), |v| v.span());
            self.error(
                at,
                "max-response-delay must be at least 3 seconds (keepalives go every third of it)",
            );
        }
        let max_unacked_updates = get(&f.max_unacked_updates, failover::DEFAULT_MAX_UNACKED);
        if max_unacked_updates == 0 {
            let at = f
                .max_unacked_updates
                .as_ref()
                .map_or(span.clone(), |v| v.span());
            self.error(at, "max-unacked-updates must be at least 1");
        }
        let mut hba = failover::split_hba(failover::DEFAULT_SPLIT);
        if role == Role::Secondary {
            for (v, what) in [
                (f.split.as_ref().map(|v| v.span()), "split"),
                (f.hba.as_ref().map(|v| v.span()), "hba"),
            ] {
                if let Some(at) = v {
                    self.error(at, format!("{what}: the secondary takes its load balancing from the primary; set it on the primary only"));
                }
            }
        }
        match (&f.split, &f.hba) {
            (Some(s), Some(_)) => self.error(s.span(), "give either split or hba, not both"),
            (Some(s), None) => {
                if *s.get_ref() > 256 {
                    self.error(s.span(), "split is a bucket count, 0 to 256");
                }
                hba = failover::split_hba(*s.get_ref());
            }
            (None, Some(h)) => match crate::config::options::parse_hex(h.get_ref()) {
                Ok(bytes) if bytes.len() == 32 => hba.copy_from_slice(&bytes),
                _ => self.error(
                    h.span(),
                    "hba must be 32 bytes of hex (64 digits, colons allowed)",
                ),
            },
            (None, None) => {}
        }
        if address.is_some() && address == peer_address {
            self.error(
                f.peer_address.span(),
                "peer-address is this server's own address",
            );
        }
        Some(FailoverConfig {
            name,
            role,
            address: address?,
            port: f
                .port
                .as_ref()
                .map_or(failover::DEFAULT_PORT, |p| *p.get_ref()),
            peer_address: peer_address?,
            peer_port: f
                .peer_port
                .as_ref()
                .map_or(failover::DEFAULT_PORT, |p| *p.get_ref()),
            mclt,
            max_response_delay,
            max_unacked_updates,
            hba,
            load_balance_max_seconds: f
                .load_balance_max_seconds
                .as_ref()
                .map_or(failover::DEFAULT_LOAD_BALANCE_MAX_SECONDS, |v| *v.get_ref()),
            auto_partner_down: get(&f.auto_partner_down, 0),
        })
    }

    fn lease_times(
        &mut self,
        default: &Option<Spanned<u32>>,
        min: &Option<Spanned<u32>>,
        max: &Option<Spanned<u32>>,
        renew: &Option<Spanned<u32>>,
        rebind: &Option<Spanned<u32>>,
        inherit: Option<&LeaseTimes>,
    ) -> LeaseTimes {
        let get = |v: &Option<Spanned<u32>>, d: u32| v.as_ref().map_or(d, |v| *v.get_ref());
        let base = inherit.cloned().unwrap_or(LeaseTimes {
            default: DEFAULT_LEASE_TIME,
            min: DEFAULT_MIN_LEASE_TIME,
            max: DEFAULT_MAX_LEASE_TIME,
            renew: None,
            rebind: None,
        });
        let t = LeaseTimes {
            default: get(default, base.default),
            min: get(min, base.min),
            max: get(max, base.max),
            renew: renew.as_ref().map(|v| *v.get_ref()).or(base.renew),
            rebind: rebind.as_ref().map(|v| *v.get_ref()).or(base.rebind),
        };
        let span_of = |v: &Option<Spanned<u32>>| v.as_ref().map(|v| v.span());
        let where_ = span_of(default)
            .or(span_of(min))
            .or(span_of(max))
            .unwrap_or(0..0);
        if t.min == 0 || t.min > t.default || t.default > t.max {
            self.error(
                where_,
                format!(
                    "lease times must satisfy 0 < min ({}) <= default ({}) <= max ({})",
                    t.min, t.default, t.max
                ),
            );
        }
        if let (Some(t1), Some(t2)) = (t.renew, t.rebind)
            && t1 >= t2
        {
            self.error(
                span_of(renew).or(span_of(rebind)).unwrap_or(0..0),
                format!("renew-time {t1} must be below rebind-time {t2}"),
            );
        }
        t
    }

    fn options(
        &mut self,
        named: &RawOptions,
        custom: &[Spanned<RawCustomOption>],
        always_send: &[Spanned<String>],
    ) -> OptionList {
        let mut list = OptionList::default();
        let mut add = |v: &mut Self, span: Range<usize>, code: u8, value: Vec<u8>, always: bool| {
            if let Some((_, why)) = options::RESERVED_CODES.iter().find(|(c, _)| *c == code) {
                v.error(span, format!("option {code} is set by the server ({why})"));
                return;
            }
            list.0.insert(
                code,
                OptionValue {
                    code,
                    value,
                    always_send: always,
                },
            );
        };
        for (name, value) in named {
            let Some((code, ty)) = options::lookup(name.get_ref()) else {
                self.error(
                    name.span(),
                    format!(
                        "unknown option `{}`; use a [[custom-option]] with code and type for options without a name here",
                        name.get_ref()
                    ),
                );
                continue;
            };
            match options::encode(ty, value.get_ref()) {
                Ok(bytes) => add(self, name.span(), code, bytes, false),
                Err(e) => self.error(value.span(), format!("option `{}`: {e}", name.get_ref())),
            }
        }
        for c in custom {
            let c = c.get_ref();
            let Some(ty) = OptionType::parse(c.ty.get_ref()) else {
                self.error(
                    c.ty.span(),
                    format!(
                        "type `{}`: expected one of {}",
                        c.ty.get_ref(),
                        OptionType::CUSTOM_NAMES
                    ),
                );
                continue;
            };
            match options::encode(ty, c.value.get_ref()) {
                Ok(bytes) => add(self, c.code.span(), *c.code.get_ref(), bytes, c.always_send),
                Err(e) => self.error(c.value.span(), format!("option {}: {e}", c.code.get_ref())),
            }
        }
        for name in always_send {
            match options::lookup(name.get_ref()) {
                Some((code, _)) => match list.0.get_mut(&code) {
                    Some(o) => o.always_send = true,
                    None => self.error(
                        name.span(),
                        format!(
                            "always-send `{}` names an option that is not set here",
                            name.get_ref()
                        ),
                    ),
                },
                None => self.error(name.span(), format!("unknown option `{}`", name.get_ref())),
            }
        }
        list
    }
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes = options::parse_hex(s).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
interfaces = ["eth0"]
server-id = "10.0.0.1"
lease-store = "/tmp/x.db"

[options]
domain-name-servers = ["10.0.0.53"]

[[subnet]]
subnet = "10.0.0.0/24"
interface = "eth0"
pools = [{ start = "10.0.0.100", end = "10.0.0.199" }]
default-lease-time = 600
[subnet.options]
routers = ["10.0.0.1"]
domain-name = "example.net"

[[subnet.custom-option]]
code = 224
type = "text"
value = "hello"

[[subnet]]
subnet = "192.168.50.0/24"
relay-addresses = ["172.16.9.1"]
pools = [{ start = "192.168.50.10", end = "192.168.50.20" }, { start = "192.168.50.30", end = "192.168.50.40" }]

[[reservation]]
hw-address = "aa:bb:cc:dd:ee:ff"
ip-address = "10.0.0.5"
hostname = "printer"
"#;

    #[test]
    fn good_config_resolves() {
        let c = parse(GOOD, "test.toml").unwrap();
        assert_eq!(c.subnets.len(), 2);
        let s = &c.subnets[0];
        assert_eq!(s.lease.default, 600);
        assert_eq!(s.options.0[&3].value, [10, 0, 0, 1]);
        assert_eq!(
            s.options.0[&6].value,
            [10, 0, 0, 53],
            "global options are inherited"
        );
        assert_eq!(
            s.options.0[&1].value,
            [255, 255, 255, 0],
            "subnet mask is implied"
        );
        assert_eq!(s.options.0[&224].value, b"hello");
        assert_ne!(c.subnets[0].link, c.subnets[1].link);
        assert_eq!(c.subnets[1].pools.len(), 2);
        assert_eq!(
            c.reservations[0].client,
            ClientMatch::HwAddress([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
        );
        assert_eq!(c.pool_size(), 100 + 11 + 11 + 1);
    }

    #[test]
    fn errors_carry_line_numbers() {
        let bad = GOOD
            .replace(r#"end = "10.0.0.199""#, r#"end = "10.0.1.199""#)
            .replace(
                r#"domain-name = "example.net""#,
                "domain-name = 7\nfoo-bar = 1",
            )
            .replace(
                r#"hw-address = "aa:bb:cc:dd:ee:ff""#,
                r#"hw-address = "aa:bb""#,
            );
        let errs = parse(&bad, "test.toml").unwrap_err();
        let text = errs.to_string();
        let at = |line: usize, what: &str| {
            assert!(
                errs.errors
                    .iter()
                    .any(|e| e.line == line && e.message.contains(what)),
                "{what} at line {line}: {text}"
            )
        };
        at(12, "not inside subnet 10.0.0.0/24");
        at(16, "option `domain-name`: expected a string");
        at(17, "unknown option `foo-bar`");
        at(30, "not a MAC address");
        assert_eq!(errs.errors.len(), 4, "{text}");
    }

    #[test]
    fn syntax_errors_carry_line_numbers() {
        let errs = parse("interfaces = [\"eth0\"]\n[[subnet]]\nsubnet = \n", "x").unwrap_err();
        assert_eq!(errs.errors[0].line, 3, "{errs}");
        let errs = parse("interfaces = [\"eth0\"]\nbogus-key = 1\n", "x").unwrap_err();
        assert!(errs.to_string().contains("bogus-key"), "{errs}");
        assert_eq!(errs.errors[0].line, 2);
    }

    #[test]
    fn semantic_checks() {
        let cases = [
            ("subnet = \"10.0.0.1/24\"", "host bits"),
            ("default-lease-time = 10", "min (300) <= default (10)"),
        ];
        for (line, expect) in cases {
            let text = format!(
                "interfaces = [\"eth0\"]\n[[subnet]]\n{}\n{}",
                if line.starts_with("subnet") {
                    line
                } else {
                    "subnet = \"10.0.0.0/24\""
                },
                if line.starts_with("subnet") { "" } else { line }
            );
            let errs = parse(&text, "x").unwrap_err();
            assert!(errs.to_string().contains(expect), "{errs}");
        }
        let errs = parse(
            "interfaces = [\"eth0\"]\n[[subnet]]\nsubnet = \"10.0.0.0/24\"\ninterface = \"eth9\"\n",
            "x",
        )
        .unwrap_err();
        assert!(errs.to_string().contains("eth9"));
        let errs = parse("interfaces = [\"eth0\"]\n[options]\nrouters = [\"1.2.3.4\"]\n[[custom-option]]\ncode = 51\ntype = \"u32\"\nvalue = 5\n", "x").unwrap_err();
        assert!(
            errs.to_string().contains("option 51 is set by the server"),
            "{errs}"
        );
    }

    #[test]
    fn failover_section() {
        let base = "interfaces = [\"eth0\"]\n[[subnet]]\nsubnet = \"10.0.0.0/24\"\n";
        let ok = parse(
            &format!("{base}[failover]\nrole = \"primary\"\naddress = \"10.9.0.1\"\npeer-address = \"10.9.0.2\"\nsplit = 64\n"),
            "x",
        )
        .unwrap();
        let f = ok.failover.unwrap();
        assert_eq!(f.role, Role::Primary);
        assert_eq!((f.port, f.peer_port, f.mclt), (647, 647, 3600));
        assert_eq!(f.hba[..8], [0xff; 8]);
        assert_eq!(f.hba[8..], [0; 24]);
        let cases = [
            (
                "role = \"tertiary\"\naddress = \"10.9.0.1\"\npeer-address = \"10.9.0.2\"",
                "expected primary or secondary",
            ),
            (
                "role = \"secondary\"\naddress = \"10.9.0.1\"\npeer-address = \"10.9.0.2\"\nsplit = 128",
                "set it on the primary only",
            ),
            (
                "role = \"primary\"\naddress = \"10.9.0.1\"\npeer-address = \"10.9.0.1\"",
                "own address",
            ),
            (
                "role = \"primary\"\naddress = \"10.9.0.1\"\npeer-address = \"10.9.0.2\"\nhba = \"ff\"",
                "32 bytes",
            ),
            (
                "role = \"primary\"\naddress = \"10.9.0.1\"\npeer-address = \"10.9.0.2\"\nmclt = 0",
                "mclt",
            ),
            ("role = \"primary\"\naddress = \"10.9.0.1\"", "peer-address"),
        ];
        for (section, expect) in cases {
            let errs = parse(&format!("{base}[failover]\n{section}\n"), "x").unwrap_err();
            let text = errs.to_string();
            assert!(text.contains(expect), "{section}: {text}");
            assert!(
                errs.errors.iter().all(|e| e.line >= 4),
                "line numbers point into [failover]: {text}"
            );
        }
    }

    #[test]
    fn lease_time_rules() {
        let t = LeaseTimes {
            default: 3600,
            min: 600,
            max: 7200,
            renew: None,
            rebind: None,
        };
        assert_eq!(t.grant(None), 3600);
        assert_eq!(t.grant(Some(60)), 600);
        assert_eq!(t.grant(Some(1_000_000)), 7200);
        assert_eq!(t.timers(3600), (1800, 3150));
        let t = LeaseTimes {
            renew: Some(100),
            rebind: Some(200),
            ..t
        };
        assert_eq!(t.timers(3600), (100, 200));
        assert_eq!(
            t.timers(150),
            (100, 132),
            "T2 beyond the lease falls back to 87.5 %"
        );
    }
}
