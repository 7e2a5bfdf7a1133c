//! DHCP options in the configuration: names for the common RFC 2132 ones, custom options by
//! code and type, and their wire encoding (long values split per RFC 3396).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// How a value is written in TOML and encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionType {
    Ip,
    IpList,
    U8,
    U16,
    U32,
    I32,
    Bool,
    Text,
    Hex,
    /// RFC 1035 names without compression (option 119, RFC 3397).
    DomainList,
    /// Pairs of destination and router (option 33).
    IpPairs,
    /// RFC 3442 classless routes (option 121).
    ClasslessRoutes,
}

impl OptionType {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "ip" => Self::Ip,
            "ip-list" => Self::IpList,
            "u8" => Self::U8,
            "u16" => Self::U16,
            "u32" => Self::U32,
            "i32" => Self::I32,
            "bool" => Self::Bool,
            "text" => Self::Text,
            "hex" => Self::Hex,
            "domain-list" => Self::DomainList,
            _ => return None,
        })
    }

    pub const CUSTOM_NAMES: &'static str =
        "ip, ip-list, u8, u16, u32, i32, bool, text, hex, domain-list";
}

/// Options known by name: (name, code, type).
pub const NAMED: &[(&str, u8, OptionType)] = &[
    ("subnet-mask", 1, OptionType::Ip),
    ("time-offset", 2, OptionType::I32),
    ("routers", 3, OptionType::IpList),
    ("time-servers", 4, OptionType::IpList),
    ("domain-name-servers", 6, OptionType::IpList),
    ("log-servers", 7, OptionType::IpList),
    ("host-name", 12, OptionType::Text),
    ("domain-name", 15, OptionType::Text),
    ("ip-forwarding", 19, OptionType::Bool),
    ("default-ip-ttl", 23, OptionType::U8),
    ("interface-mtu", 26, OptionType::U16),
    ("broadcast-address", 28, OptionType::Ip),
    ("static-routes", 33, OptionType::IpPairs),
    ("arp-cache-timeout", 35, OptionType::U32),
    ("nis-domain", 40, OptionType::Text),
    ("nis-servers", 41, OptionType::IpList),
    ("ntp-servers", 42, OptionType::IpList),
    ("vendor-encapsulated-options", 43, OptionType::Hex),
    ("netbios-name-servers", 44, OptionType::IpList),
    ("netbios-node-type", 46, OptionType::U8),
    ("tftp-server-name", 66, OptionType::Text),
    ("bootfile-name", 67, OptionType::Text),
    ("smtp-servers", 69, OptionType::IpList),
    ("pop-servers", 70, OptionType::IpList),
    ("captive-portal", 114, OptionType::Text),
    ("domain-search", 119, OptionType::DomainList),
    ("classless-static-routes", 121, OptionType::ClasslessRoutes),
];

/// Codes the server writes itself; configuring them would contradict the protocol.
pub const RESERVED_CODES: &[(u8, &str)] = &[
    (0, "PAD"),
    (50, "requested address"),
    (51, "lease time (use default-lease-time)"),
    (52, "overload"),
    (53, "message type"),
    (54, "server identifier (use server-id)"),
    (55, "parameter request list"),
    (57, "maximum message size"),
    (58, "renewal time (use renew-time)"),
    (59, "rebinding time (use rebind-time)"),
    (61, "client identifier"),
    (82, "relay agent information"),
    (255, "END"),
];

pub fn lookup(name: &str) -> Option<(u8, OptionType)> {
    NAMED
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, c, t)| (*c, *t))
}

pub fn name_of(code: u8) -> Option<&'static str> {
    NAMED
        .iter()
        .find(|(_, c, _)| *c == code)
        .map(|(n, _, _)| *n)
}

/// Encodes a TOML value as the option's payload (the bytes after code and length).
pub fn encode(ty: OptionType, value: &toml::Value) -> Result<Vec<u8>, String> {
    use toml::Value as V;
    let ip = |v: &V| -> Result<Ipv4Addr, String> {
        v.as_str()
            .ok_or_else(|| {
                format!(
                    "expected an IPv4 address as a string, found {}",
                    v.type_str()
                )
            })?
            .parse::<Ipv4Addr>()
            .map_err(|e| format!("{e}: {v}"))
    };
    let int = |v: &V, min: i64, max: i64| -> Result<i64, String> {
        let n = v
            .as_integer()
            .ok_or_else(|| format!("expected an integer, found {}", v.type_str()))?;
        if n < min || n > max {
            return Err(format!("{n} is out of range {min}..={max}"));
        }
        Ok(n)
    };
    let list = |v: &V| -> Result<Vec<V>, String> {
        match v {
            V::Array(a) if !a.is_empty() => Ok(a.clone()),
            V::Array(_) => Err("empty list".into()),
            other => Ok(vec![other.clone()]),
        }
    };
    Ok(match ty {
        OptionType::Ip => ip(value)?.octets().to_vec(),
        OptionType::IpList => {
            let mut out = vec![];
            for v in list(value)? {
                out.extend_from_slice(&ip(&v)?.octets());
            }
            out
        }
        OptionType::U8 => vec![int(value, 0, 255)? as u8],
        OptionType::U16 => (int(value, 0, 65535)? as u16).to_be_bytes().to_vec(),
        OptionType::U32 => (int(value, 0, u32::MAX as i64)? as u32)
            .to_be_bytes()
            .to_vec(),
        OptionType::I32 => (int(value, i32::MIN as i64, i32::MAX as i64)? as i32)
            .to_be_bytes()
            .to_vec(),
        OptionType::Bool => {
            vec![u8::from(value.as_bool().ok_or_else(|| {
                format!("expected true or false, found {}", value.type_str())
            })?)]
        }
        OptionType::Text => {
            let s = value
                .as_str()
                .ok_or_else(|| format!("expected a string, found {}", value.type_str()))?;
            if s.is_empty() {
                return Err("empty text".into());
            }
            s.as_bytes().to_vec()
        }
        OptionType::Hex => parse_hex(
            value
                .as_str()
                .ok_or("expected a hex string like \"01:02:ab\"")?,
        )?,
        OptionType::DomainList => {
            let mut out = vec![];
            for v in list(value)? {
                let name = v.as_str().ok_or("expected domain names as strings")?;
                out.extend(encode_domain(name)?);
            }
            out
        }
        OptionType::IpPairs => {
            let mut out = vec![];
            for v in list(value)? {
                let (dest, router) = route_entry(&v)?;
                if dest.prefix_len() != 32 {
                    return Err(format!(
                        "static-routes takes host routes; use classless-static-routes for {dest}"
                    ));
                }
                out.extend_from_slice(&dest.addr().octets());
                out.extend_from_slice(&router.octets());
            }
            out
        }
        OptionType::ClasslessRoutes => {
            let mut out = vec![];
            for v in list(value)? {
                let (dest, router) = route_entry(&v)?;
                let width = dest.prefix_len();
                out.push(width);
                out.extend_from_slice(&dest.network().octets()[..width.div_ceil(8) as usize]);
                out.extend_from_slice(&router.octets());
            }
            out
        }
    })
}

/// `{ destination = "10.1.0.0/16", router = "10.0.0.254" }`
fn route_entry(v: &toml::Value) -> Result<(Ipv4Net, Ipv4Addr), String> {
    let t = v
        .as_table()
        .ok_or("expected routes as { destination = \"a.b.c.d/n\", router = \"a.b.c.d\" }")?;
    let dest = t
        .get("destination")
        .and_then(|d| d.as_str())
        .ok_or("route without destination")?;
    let dest: Ipv4Net = if dest.contains('/') {
        dest.parse().map_err(|e| format!("{e}: {dest}"))?
    } else {
        Ipv4Net::new(dest.parse().map_err(|e| format!("{e}: {dest}"))?, 32)
            .expect("32 is a valid prefix")
    };
    if dest.network() != dest.addr() {
        return Err(format!("route destination {dest} has host bits set"));
    }
    let router = t
        .get("router")
        .and_then(|r| r.as_str())
        .ok_or("route without router")?;
    let router = router.parse().map_err(|e| format!("{e}: {router}"))?;
    if let Some(extra) = t.keys().find(|k| *k != "destination" && *k != "router") {
        return Err(format!("unknown route field `{extra}`"));
    }
    Ok((dest, router))
}

pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: String = s
        .chars()
        .filter(|c| *c != ':' && *c != '-' && !c.is_whitespace())
        .collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return Err(format!("`{s}` is not an even number of hex digits"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| format!("`{s}` is not hex")))
        .collect()
}

/// RFC 1035 §3.1 wire form of a name, without compression.
fn encode_domain(name: &str) -> Result<Vec<u8>, String> {
    let mut out = vec![];
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("`{name}` is not a valid domain name"));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(out)
}

/// Appends code, length and value, splitting values over 255 bytes into consecutive
/// instances of the same option (RFC 3396 §6).
pub fn append(out: &mut Vec<u8>, code: u8, value: &[u8]) {
    if value.is_empty() {
        out.extend_from_slice(&[code, 0]);
        return;
    }
    for chunk in value.chunks(255) {
        out.push(code);
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> toml::Value {
        toml::from_str::<toml::Table>(&format!("x = {s}"))
            .unwrap()
            .remove("x")
            .unwrap()
    }

    #[test]
    fn encodes_each_type() {
        assert_eq!(
            encode(OptionType::IpList, &v(r#"["10.0.0.1", "10.0.0.2"]"#)).unwrap(),
            [10, 0, 0, 1, 10, 0, 0, 2]
        );
        assert_eq!(encode(OptionType::U16, &v("1500")).unwrap(), [5, 220]);
        assert!(encode(OptionType::U16, &v("70000")).is_err());
        assert_eq!(
            encode(OptionType::I32, &v("-3600")).unwrap(),
            (-3600i32).to_be_bytes()
        );
        assert_eq!(
            encode(OptionType::Hex, &v(r#""01:02:ab""#)).unwrap(),
            [1, 2, 0xab]
        );
        assert!(encode(OptionType::Hex, &v(r#""0g""#)).is_err());
        assert_eq!(
            encode(
                OptionType::DomainList,
                &v(r#"["eng.example.com", "example.com"]"#)
            )
            .unwrap(),
            b"\x03eng\x07example\x03com\x00\x07example\x03com\x00"
        );
        // RFC 3442 examples: 10.0.0.0/8 via 10.0.0.1; 0/0 via 10.0.0.1; 10.17.0.0/16.
        assert_eq!(
            encode(
                OptionType::ClasslessRoutes,
                &v(r#"[{ destination = "10.0.0.0/8", router = "10.0.0.1" }, { destination = "0.0.0.0/0", router = "10.0.0.1" }, { destination = "10.17.0.0/16", router = "10.0.0.1" }]"#)
            )
            .unwrap(),
            [8, 10, 10, 0, 0, 1, 0, 10, 0, 0, 1, 16, 10, 17, 10, 0, 0, 1]
        );
        assert!(encode(OptionType::Ip, &v("3")).is_err());
    }

    #[test]
    fn long_values_are_split() {
        let mut out = vec![];
        append(&mut out, 224, &[7; 300]);
        assert_eq!(out.len(), 2 + 255 + 2 + 45);
        assert_eq!(&out[..2], &[224, 255]);
        assert_eq!(&out[257..259], &[224, 45]);
    }
}
