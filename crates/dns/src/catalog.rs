//! What the DNS knows and how it answers: zones built from the configuration, silo host
//! names answered from their clusters' live state, and the RFC 1034/1035/6891 rules for
//! authoritative answers. Pure: bytes in, bytes out, no sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use config::{Dns, RecordData, Rotation, Silo};
use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, NS, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// The largest UDP answer we send (the DNS flag day 2020 value).
pub const MAX_UDP: usize = 1232;

/// How a query arrived, which bounds the answer's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One cluster address of a silo, with its health as the checker last saw it and whether
/// its operators left it a server to take mail.
#[derive(Debug)]
pub struct ClusterEntry {
    pub name: String,
    pub ip: IpAddr,
    pub weight: i64,
    pub healthy: AtomicBool,
    /// At least one of its servers is ready (not drained, in maintenance or removed) in the
    /// run-time configuration: a cluster its operators emptied leaves the answers at once,
    /// before its balancer's health checks would notice.
    pub serving: AtomicBool,
}

impl ClusterEntry {
    /// Whether the answers carry it: healthy and serving.
    pub fn answered(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.serving.load(Ordering::Relaxed)
    }
}

/// A silo host name's live answer state.
#[derive(Debug)]
pub struct SiloEntry {
    pub name: String,
    pub ttl: u32,
    pub rotation: Rotation,
    pub clusters: Vec<ClusterEntry>,
    turn: AtomicUsize,
    /// Smooth weighted round-robin state for `cycle`.
    swrr: Mutex<health::Swrr>,
}

impl SiloEntry {
    fn new(s: &Silo) -> SiloEntry {
        SiloEntry {
            name: s.name.clone(),
            ttl: s.ttl,
            rotation: s.rotation,
            clusters: s
                .clusters
                .iter()
                .map(|c| ClusterEntry {
                    name: c.name.clone(),
                    ip: c.address.ip(),
                    weight: i64::from(c.weight),
                    healthy: AtomicBool::new(true),
                    serving: AtomicBool::new(true),
                })
                .collect(),
            turn: AtomicUsize::new(0),
            swrr: Mutex::default(),
        }
    }

    /// The clusters answers are made of now: the healthy, serving ones, unless there are
    /// none (then every cluster: never an empty answer).
    pub fn pool(&self) -> Vec<usize> {
        let answered: Vec<usize> = (0..self.clusters.len())
            .filter(|&i| self.clusters[i].answered())
            .collect();
        if answered.is_empty() {
            (0..self.clusters.len()).collect()
        } else {
            answered
        }
    }

    /// The addresses for the next answer, from [`SiloEntry::pool`].
    pub fn next_addresses(&self) -> Vec<IpAddr> {
        let pool = self.pool();
        match self.rotation {
            Rotation::Rotate => {
                let n = self.turn.fetch_add(1, Ordering::Relaxed) % pool.len();
                pool[n..]
                    .iter()
                    .chain(&pool[..n])
                    .map(|&i| self.clusters[i].ip)
                    .collect()
            }
            Rotation::Cycle => {
                // Smooth weighted round-robin over the pool; the others weigh nothing.
                let weights: Vec<i64> = (0..self.clusters.len())
                    .map(|i| {
                        if pool.contains(&i) {
                            self.clusters[i].weight
                        } else {
                            0
                        }
                    })
                    .collect();
                let best = self
                    .swrr
                    .lock()
                    .expect("rotation state")
                    .pick(&weights)
                    .unwrap_or(pool[0]);
                vec![self.clusters[best].ip]
            }
        }
    }
}

struct ZoneData {
    apex: Name,
    soa: Record,
    /// Static records by lower-case owner name.
    records: HashMap<Name, Vec<Record>>,
}

/// Everything the server answers from.
pub struct Catalog {
    zones: Vec<ZoneData>,
    silos: HashMap<Name, SiloEntry>,
    /// Silo names in lower-case wire format, for the fast path.
    silo_wire: HashMap<Vec<u8>, Name>,
}

/// A name in wire format, lower case (`\x05silo1\x08mailsilo\x04test\x00`).
fn wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

fn name(s: &str) -> Name {
    let mut n = Name::from_str(s).expect("validated host name");
    n.set_fqdn(true);
    n
}

impl Catalog {
    pub fn new(dns: &Dns, silos: &[Silo]) -> Catalog {
        let zones = dns
            .zones
            .iter()
            .map(|z| {
                let apex = name(&z.name);
                let soa = Record::from_rdata(
                    apex.clone(),
                    z.negative_ttl.min(z.ttl),
                    RData::SOA(SOA::new(
                        name(&z.nameservers[0]),
                        name(&z.hostmaster),
                        z.serial,
                        3600,
                        600,
                        604_800,
                        z.negative_ttl,
                    )),
                );
                let mut records: HashMap<Name, Vec<Record>> = HashMap::new();
                let mut apex_records =
                    vec![Record::from_rdata(apex.clone(), z.ttl, soa.data().clone())];
                apex_records.extend(
                    z.nameservers
                        .iter()
                        .map(|n| Record::from_rdata(apex.clone(), z.ttl, RData::NS(NS(name(n))))),
                );
                records.insert(apex.clone(), apex_records);
                for r in &z.records {
                    let data = match &r.data {
                        RecordData::A(a) => RData::A(A(*a)),
                        RecordData::Aaaa(a) => RData::AAAA(AAAA(*a)),
                        RecordData::Mx {
                            preference,
                            exchange,
                        } => RData::MX(MX::new(*preference, name(exchange))),
                        // A TXT string holds at most 255 octets; a longer value (a
                        // 2048-bit DKIM key) is served as consecutive strings, as zone
                        // files write it, which readers join.
                        RecordData::Txt(t) => RData::TXT(TXT::new(
                            t.as_bytes()
                                .chunks(255)
                                .map(|c| String::from_utf8_lossy(c).into_owned())
                                .collect(),
                        )),
                        RecordData::Ns(n) => RData::NS(NS(name(n))),
                    };
                    records
                        .entry(name(&r.name))
                        .or_default()
                        .push(Record::from_rdata(name(&r.name), r.ttl, data));
                }
                ZoneData { apex, soa, records }
            })
            .collect();
        let silos: HashMap<Name, SiloEntry> = silos
            .iter()
            .map(|s| (name(&s.name), SiloEntry::new(s)))
            .collect();
        let silo_wire = silos.keys().map(|n| (wire(n), n.clone())).collect();
        Catalog {
            zones,
            silos,
            silo_wire,
        }
    }

    /// The silos, for the health checker.
    pub fn silos(&self) -> impl Iterator<Item = &SiloEntry> {
        self.silos.values()
    }

    /// Marks each cluster serving or not, by name (a cluster missing from `serving` keeps its
    /// flag).
    pub fn set_serving(&self, serving: &HashMap<String, bool>) {
        for c in self.silos.values().flat_map(|s| &s.clusters) {
            if let Some(&on) = serving.get(&c.name) {
                c.serving.store(on, Ordering::Relaxed);
            }
        }
    }

    /// The hot path, encoded by hand: a standard query for a silo name's A or AAAA records,
    /// class IN, without EDNS or with a plain EDNS(0) OPT record, whose answer fits. Anything
    /// else (including NODATA and truncation) returns `None` and takes [`Catalog::answer`]'s
    /// full path, which gives the same answer for these queries (see the tests).
    fn fast_answer(&self, q: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let count = |i: usize| u16::from_be_bytes([q[i], q[i + 1]]);
        // QR=0, OPCODE=0, AA=0, TC=0; one question; no answer or authority; at most an OPT.
        if q.len() < 17
            || q[2] & 0xfe != 0
            || q[3] & 0x0f != 0
            || count(4) != 1
            || count(6) != 0
            || count(8) != 0
            || count(10) > 1
        {
            return None;
        }
        let mut lower = [0u8; 256];
        let mut i = 12;
        loop {
            let len = usize::from(*q.get(i)?);
            if len >= 0x40 || i - 12 + len + 1 >= lower.len() {
                return None; // compression in a question, or too long
            }
            lower[i - 12] = len as u8;
            for k in 1..=len {
                lower[i - 12 + k] = q.get(i + k)?.to_ascii_lowercase();
            }
            i += len + 1;
            if len == 0 {
                break;
            }
        }
        let qname_end = i;
        let (qtype, qclass) = (
            u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]),
            u16::from_be_bytes([*q.get(i + 2)?, *q.get(i + 3)?]),
        );
        let question_end = i + 4;
        if qclass != 1 || !(qtype == 1 || qtype == 28) {
            return None;
        }
        let edns_payload = if count(10) == 1 {
            // root name, TYPE OPT, CLASS payload, TTL ext-rcode/version/flags, RDLEN 0
            let opt = q.get(question_end..question_end + 11)?;
            if opt[0] != 0
                || opt[1..3] != [0, 41]
                || opt[5] != 0
                || opt[6] != 0
                || opt[9..11] != [0, 0]
                || q.len() != question_end + 11
            {
                return None;
            }
            Some(usize::from(u16::from_be_bytes([opt[3], opt[4]])))
        } else if q.len() == question_end {
            None
        } else {
            return None;
        };
        let name = self.silo_wire.get(&lower[..qname_end - 12])?;
        let silo = self.silos.get(name)?;
        let ips: Vec<IpAddr> = silo
            .next_addresses()
            .into_iter()
            .filter(|ip| ip.is_ipv4() == (qtype == 1))
            .collect();
        if ips.is_empty() {
            return None;
        }
        let max = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => edns_payload.map_or(512, |p| p.clamp(512, MAX_UDP)),
        };
        let mut out = Vec::with_capacity(question_end + ips.len() * 28 + 11);
        out.extend_from_slice(&q[..2]);
        out.push(0x84 | (q[2] & 0x01)); // QR, AA, RD copied
        out.push(0); // RA=0, Z=0, RCODE=NOERROR
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&(ips.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, u8::from(edns_payload.is_some())]);
        out.extend_from_slice(&q[12..question_end]);
        for ip in &ips {
            out.extend_from_slice(&[0xc0, 0x0c]);
            out.extend_from_slice(&qtype.to_be_bytes());
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&silo.ttl.to_be_bytes());
            match ip {
                IpAddr::V4(a) => {
                    out.extend_from_slice(&[0, 4]);
                    out.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.extend_from_slice(&[0, 16]);
                    out.extend_from_slice(&a.octets());
                }
            }
        }
        if edns_payload.is_some() {
            out.extend_from_slice(&[0, 0, 41]);
            out.extend_from_slice(&(MAX_UDP as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        (out.len() <= max).then_some(out)
    }

    /// Answers one query message. `None` means send nothing (not a query, or too broken to
    /// answer even with FORMERR).
    pub fn answer(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        if let Some(fast) = self.fast_answer(query, transport) {
            return Some(fast);
        }
        self.full_answer(query, transport)
    }

    /// The general path: parse with hickory, apply every rule, encode with hickory.
    fn full_answer(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        // Too short for a header, or a response (QR set): never answered, so the server
        // cannot be made to answer another server's answers.
        if query.len() < Header::len() || query[2] & 0x80 != 0 {
            return None;
        }
        // Bytes after the records the header counts are a malformed message too (as Knot
        // has it): FORMERR, not an answer to the part that parsed.
        let mut decoder = BinDecoder::new(query);
        let request = match Message::read(&mut decoder) {
            Ok(m) if decoder.is_empty() => m,
            _ => return Some(formerr(query)),
        };
        if request.message_type() != MessageType::Query {
            return None;
        }
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(false);
        let max_size = match transport {
            Transport::Tcp => u16::MAX as usize,
            Transport::Udp => request
                .extensions()
                .as_ref()
                .map_or(512, |e| (e.max_payload() as usize).clamp(512, MAX_UDP)),
        };
        if let Some(req_edns) = request.extensions() {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP as u16).set_version(0);
            response.set_edns(edns);
            if req_edns.version() > 0 {
                response.set_response_code(ResponseCode::BADVERS);
                return encode(&response, max_size);
            }
        }
        if request.op_code() != OpCode::Query {
            response.set_response_code(ResponseCode::NotImp);
            return encode(&response, max_size);
        }
        let [question] = request.queries() else {
            response.set_response_code(ResponseCode::FormErr);
            return encode(&response, max_size);
        };
        response.add_query(question.clone());
        let qname = question.name().to_lowercase();
        let qtype = question.query_type();
        // No zone transfer is configured, and only class IN is served (NSD and Knot answer
        // both with REFUSED rather than with IN data).
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR)
            || question.query_class() != DNSClass::IN
        {
            response.set_response_code(ResponseCode::Refused);
            return encode(&response, max_size);
        }
        let Some(zone) = self
            .zones
            .iter()
            .filter(|z| z.apex.zone_of(&qname))
            .max_by_key(|z| z.apex.num_labels())
        else {
            response.set_response_code(ResponseCode::Refused);
            return encode(&response, max_size);
        };
        response.set_authoritative(true);

        let mut answers: Vec<Record> = Vec::new();
        let mut exists = false;
        if let Some(silo) = self.silos.get(&qname) {
            exists = true;
            for ip in silo.next_addresses() {
                let data = match ip {
                    IpAddr::V4(a) => RData::A(A(a)),
                    IpAddr::V6(a) => RData::AAAA(AAAA(a)),
                };
                if matches!(qtype, RecordType::ANY) || data.record_type() == qtype {
                    answers.push(Record::from_rdata(qname.clone(), silo.ttl, data));
                }
            }
        }
        if let Some(records) = zone.records.get(&qname) {
            exists = true;
            answers.extend(
                records
                    .iter()
                    .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                    .cloned(),
            );
        }
        // An empty non-terminal (a name with names below it) exists too.
        exists = exists
            || zone
                .records
                .keys()
                .chain(self.silos.keys())
                .any(|n| n != &qname && qname.zone_of(n));

        if answers.is_empty() {
            if !exists {
                response.set_response_code(ResponseCode::NXDomain);
            }
            response.add_name_server(zone.soa.clone());
        } else {
            let glue: Vec<Record> = answers
                .iter()
                .filter_map(|r| match r.data() {
                    RData::MX(mx) => Some(mx.exchange().to_lowercase()),
                    RData::NS(ns) => Some(ns.0.to_lowercase()),
                    _ => None,
                })
                .flat_map(|target| zone.records.get(&target).into_iter().flatten())
                .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
                .cloned()
                .collect();
            for r in &mut answers {
                r.set_name(question.name().clone());
            }
            response.add_answers(answers);
            response.add_additionals(glue);
        }
        encode(&response, max_size)
    }
}

/// Encodes a response; over `max_size` it is sent truncated (TC set, records dropped) so the
/// client retries over TCP.
fn encode(response: &Message, max_size: usize) -> Option<Vec<u8>> {
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= max_size {
        return Some(bytes);
    }
    let mut small = response.clone();
    small.take_answers();
    small.take_name_servers();
    small.take_additionals();
    small.set_truncated(true);
    small.to_vec().ok()
}

/// FORMERR for a message whose header parsed but whose body did not.
fn formerr(query: &[u8]) -> Vec<u8> {
    let mut out = query[..Header::len()].to_vec();
    // QR=1, keep opcode and RD; AA, TC, RA, Z, AD, CD cleared; RCODE=1.
    out[2] = (out[2] & 0b0111_1001) | 0b1000_0000;
    out[3] = 1;
    out[4..12].fill(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use proptest::prelude::*;

    fn catalog(extra: &str) -> Catalog {
        let c = config::Config::parse("t.toml", &format!("{}\n{extra}", config::DEMO)).unwrap();
        Catalog::new(c.dns.as_ref().unwrap(), &c.silos)
    }

    fn ask(
        cat: &Catalog,
        qname: &str,
        qtype: RecordType,
        edns: Option<(u16, u8)>,
        transport: Transport,
    ) -> Message {
        let mut m = Message::new();
        m.set_id(4242).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_str(qname).unwrap(), qtype));
        if let Some((size, version)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size).set_version(version);
            m.set_edns(e);
        }
        Message::from_vec(&cat.answer(&m.to_vec().unwrap(), transport).unwrap()).unwrap()
    }

    fn ips(m: &Message) -> Vec<String> {
        m.answers().iter().map(|r| r.data().to_string()).collect()
    }

    /// The addresses of the next plain UDP answer for the demo silo.
    fn silo_ips(cat: &Catalog) -> Vec<String> {
        ips(&ask(
            cat,
            "silo1.mailsilo.test.",
            RecordType::A,
            None,
            Transport::Udp,
        ))
    }

    #[test]
    fn rotate_gives_all_addresses_rotated_by_one() {
        let cat = catalog("");
        let first = ask(
            &cat,
            "silo1.mailsilo.test.",
            RecordType::A,
            None,
            Transport::Udp,
        );
        assert!(first.authoritative() && !first.recursion_available() && first.recursion_desired());
        assert_eq!(first.response_code(), ResponseCode::NoError);
        assert_eq!(first.answers()[0].ttl(), 900);
        let mut seen = vec![ips(&first)];
        for _ in 0..4 {
            seen.push(ips(&ask(
                &cat,
                "SILO1.mailsilo.test.",
                RecordType::A,
                None,
                Transport::Udp,
            )));
        }
        assert_eq!(
            seen[0],
            vec!["127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.4"]
        );
        assert_eq!(
            seen[1],
            vec!["127.0.1.2", "127.0.1.3", "127.0.1.4", "127.0.1.1"]
        );
        assert_eq!(
            seen[3],
            vec!["127.0.1.4", "127.0.1.1", "127.0.1.2", "127.0.1.3"]
        );
        assert_eq!(seen[4], seen[0]);
    }

    #[test]
    fn cycle_gives_one_address_in_turn_and_skips_unhealthy() {
        let text = config::DEMO.replace("rotation = \"rotate\"", "rotation = \"cycle\"");
        let c = config::Config::parse("t.toml", &text).unwrap();
        let cat = Catalog::new(c.dns.as_ref().unwrap(), &c.silos);
        let seq: Vec<Vec<String>> = (0..5).map(|_| silo_ips(&cat)).collect();
        let flat: Vec<&str> = seq.iter().map(|v| v[0].as_str()).collect();
        assert_eq!(
            flat,
            [
                "127.0.1.1",
                "127.0.1.2",
                "127.0.1.3",
                "127.0.1.4",
                "127.0.1.1"
            ]
        );
        let silo = cat.silos().next().unwrap();
        silo.clusters[1].healthy.store(false, Ordering::Relaxed);
        let seq: Vec<String> = (0..6).map(|_| silo_ips(&cat)[0].clone()).collect();
        assert!(!seq.contains(&"127.0.1.2".to_string()), "{seq:?}");
        for c in &silo.clusters {
            c.healthy.store(false, Ordering::Relaxed);
        }
        assert_eq!(silo_ips(&cat).len(), 1, "never empty");
    }

    #[test]
    fn weighted_cycle_follows_nginx() {
        let text = config::DEMO
            .replace("rotation = \"rotate\"", "rotation = \"cycle\"")
            .replacen("proxy = true", "proxy = true\nweight = 5", 1);
        let c = config::Config::parse("t.toml", &text).unwrap();
        let cat = Catalog::new(c.dns.as_ref().unwrap(), &c.silos);
        let seq: Vec<String> = (0..8).map(|_| silo_ips(&cat)[0].clone()).collect();
        // {5,1,1,1}: the heavy one takes 5 of every 8 answers, spread out.
        assert_eq!(
            seq.iter().filter(|s| *s == "127.0.1.1").count(),
            5,
            "{seq:?}"
        );
        assert_eq!(seq[0], "127.0.1.1");
    }

    #[test]
    fn unhealthy_clusters_leave_rotate_answers() {
        let cat = catalog("");
        let silo = cat.silos().next().unwrap();
        silo.clusters[2].healthy.store(false, Ordering::Relaxed);
        let a = silo_ips(&cat);
        assert_eq!(a.len(), 3);
        assert!(!a.contains(&"127.0.1.3".to_string()));
    }

    #[test]
    fn clusters_left_without_a_ready_server_leave_the_answers() {
        let cat = catalog("");
        let silo = cat.silos().next().unwrap();
        let names: Vec<String> = silo.clusters.iter().map(|c| c.name.clone()).collect();
        cat.set_serving(&HashMap::from([(names[0].clone(), false)]));
        let a = silo_ips(&cat);
        assert_eq!(a.len(), 3);
        assert!(!a.contains(&"127.0.1.1".to_string()), "{a:?}");
        // Down and emptied combine; with none answerable, every cluster is answered.
        silo.clusters[1].healthy.store(false, Ordering::Relaxed);
        assert_eq!(silo.pool(), [2, 3]);
        cat.set_serving(&names.iter().map(|n| (n.clone(), false)).collect());
        assert_eq!(silo_ips(&cat).len(), 4, "never empty");
        cat.set_serving(&HashMap::from([(names[0].clone(), true)]));
        assert_eq!(silo_ips(&cat), ["127.0.1.1"]);
    }

    #[test]
    fn negative_answers_carry_the_soa() {
        let cat = catalog("");
        let nx = ask(
            &cat,
            "nope.mailsilo.test.",
            RecordType::A,
            None,
            Transport::Udp,
        );
        assert_eq!(nx.response_code(), ResponseCode::NXDomain);
        assert!(nx.authoritative());
        assert_eq!(nx.name_servers()[0].record_type(), RecordType::SOA);
        let nodata = ask(
            &cat,
            "silo1.mailsilo.test.",
            RecordType::MX,
            None,
            Transport::Udp,
        );
        assert_eq!(nodata.response_code(), ResponseCode::NoError);
        assert!(nodata.answers().is_empty());
        assert_eq!(nodata.name_servers()[0].record_type(), RecordType::SOA);
        let unknown = ask(
            &cat,
            "ns1.mailsilo.test.",
            RecordType::CAA,
            None,
            Transport::Udp,
        );
        assert_eq!(
            (unknown.response_code(), unknown.answers().len()),
            (ResponseCode::NoError, 0)
        );
        let soa = ask(
            &cat,
            "mailsilo.test.",
            RecordType::SOA,
            None,
            Transport::Udp,
        );
        assert_eq!(soa.answers()[0].record_type(), RecordType::SOA);
        let ns = ask(&cat, "mailsilo.test.", RecordType::NS, None, Transport::Udp);
        assert_eq!(ns.answers()[0].data().to_string(), "ns1.mailsilo.test.");
        assert_eq!(ns.additionals()[0].data().to_string(), "127.0.0.1", "glue");
    }

    /// No zone transfers, and only class IN: REFUSED, with no data.
    #[test]
    fn transfers_and_other_classes_are_refused() {
        let cat = catalog("");
        for t in [RecordType::AXFR, RecordType::IXFR] {
            let r = ask(&cat, "mailsilo.test.", t, None, Transport::Tcp);
            assert_eq!(r.response_code(), ResponseCode::Refused, "{t}");
            assert!(r.answers().is_empty());
        }
        for class in [DNSClass::CH, DNSClass::HS, DNSClass::ANY] {
            let mut m = Message::new();
            let mut q = Query::query(
                Name::from_str("silo1.mailsilo.test.").unwrap(),
                RecordType::A,
            );
            q.set_query_class(class);
            m.set_id(7).add_query(q);
            let r = Message::from_vec(&cat.answer(&m.to_vec().unwrap(), Transport::Udp).unwrap())
                .unwrap();
            assert_eq!(r.response_code(), ResponseCode::Refused, "{class}");
            assert!(r.answers().is_empty(), "{class}");
        }
    }

    #[test]
    fn refused_outside_the_zones() {
        let cat = catalog("");
        let r = ask(&cat, "example.com.", RecordType::A, None, Transport::Udp);
        assert_eq!(r.response_code(), ResponseCode::Refused);
        assert!(!r.authoritative());
        assert!(r.answers().is_empty());
    }

    #[test]
    fn edns_is_echoed_and_versions_checked() {
        let cat = catalog("");
        let r = ask(
            &cat,
            "silo1.mailsilo.test.",
            RecordType::A,
            Some((4096, 0)),
            Transport::Udp,
        );
        assert_eq!(
            r.extensions().as_ref().unwrap().max_payload(),
            MAX_UDP as u16
        );
        let r = ask(
            &cat,
            "silo1.mailsilo.test.",
            RecordType::A,
            Some((4096, 1)),
            Transport::Udp,
        );
        assert_eq!(
            u16::from(r.response_code()),
            16,
            "BADVERS (hickory names code 16 BADSIG when decoding)"
        );
        assert!(r.answers().is_empty());
    }

    #[test]
    fn long_txt_values_are_served_as_strings_of_255_octets() {
        let key = format!("v=DKIM1; k=rsa; p={}", "A".repeat(600));
        // Into the zone mailsilo.test, before the next zone starts.
        let text = config::DEMO.replace(
            "\n# A demo DNS list",
            &format!(
                "\n[[dns.zone.record]]\nname = \"s1._domainkey\"\ntype = \"TXT\"\nvalue = \"{key}\"\n\n# A demo DNS list"
            ),
        );
        let c = config::Config::parse("t.toml", &text).unwrap();
        let cat = Catalog::new(c.dns.as_ref().unwrap(), &c.silos);
        let r = ask(
            &cat,
            "s1._domainkey.mailsilo.test.",
            RecordType::TXT,
            Some((1232, 0)),
            Transport::Udp,
        );
        let Some(RData::TXT(txt)) = r.answers().first().map(|a| a.data()) else {
            panic!("{r:?}")
        };
        let strings: Vec<&[u8]> = txt.iter().map(|s| &s[..]).collect();
        assert_eq!(
            strings.iter().map(|s| s.len()).collect::<Vec<_>>(),
            [255, 255, key.len() - 510]
        );
        assert_eq!(strings.concat(), key.as_bytes());
    }

    #[test]
    fn big_answers_are_truncated_on_udp_only() {
        let mut extra = String::new();
        for i in 0..40 {
            extra.push_str(&format!(
                "[[dns.zone.record]]\nname = \"big\"\ntype = \"TXT\"\nvalue = \"{}{i}\"\n",
                "x".repeat(60)
            ));
        }
        // Into the zone mailsilo.test, before the next zone starts.
        let text = config::DEMO.replace(
            "\n# A demo DNS list",
            &format!("\n{extra}\n# A demo DNS list"),
        );
        assert_ne!(text, config::DEMO, "the records went in");
        let c = config::Config::parse("t.toml", &text).unwrap();
        let cat = Catalog::new(c.dns.as_ref().unwrap(), &c.silos);
        let udp = ask(
            &cat,
            "big.mailsilo.test.",
            RecordType::TXT,
            None,
            Transport::Udp,
        );
        assert!(udp.truncated() && udp.answers().is_empty());
        let udp = ask(
            &cat,
            "big.mailsilo.test.",
            RecordType::TXT,
            Some((4096, 0)),
            Transport::Udp,
        );
        assert!(udp.truncated(), "even with EDNS, at most 1232 bytes");
        let tcp = ask(
            &cat,
            "big.mailsilo.test.",
            RecordType::TXT,
            None,
            Transport::Tcp,
        );
        assert!(!tcp.truncated());
        assert_eq!(tcp.answers().len(), 40);
    }

    #[test]
    fn malformed_input() {
        let cat = catalog("");
        assert_eq!(cat.answer(b"short", Transport::Udp), None);
        let mut q = Message::new();
        q.set_id(7).add_query(Query::query(
            Name::from_str("silo1.mailsilo.test.").unwrap(),
            RecordType::A,
        ));
        let mut bytes = q.to_vec().unwrap();
        bytes.truncate(bytes.len() - 3);
        let r = Message::from_vec(&cat.answer(&bytes, Transport::Udp).unwrap()).unwrap();
        assert_eq!((r.id(), r.response_code()), (7, ResponseCode::FormErr));
        // Bytes after the counted records: FORMERR too (the fast path leaves such a query
        // to the full path).
        let mut bytes = q.to_vec().unwrap();
        bytes.extend_from_slice(b"junk");
        let r = Message::from_vec(&cat.answer(&bytes, Transport::Udp).unwrap()).unwrap();
        assert_eq!((r.id(), r.response_code()), (7, ResponseCode::FormErr));
        // A response is never answered (no reflection loops).
        let mut resp = q.clone();
        resp.set_message_type(MessageType::Response);
        assert_eq!(cat.answer(&resp.to_vec().unwrap(), Transport::Udp), None);
        // Two questions: FORMERR.
        q.add_query(Query::query(
            Name::from_str("a.mailsilo.test.").unwrap(),
            RecordType::A,
        ));
        let r =
            Message::from_vec(&cat.answer(&q.to_vec().unwrap(), Transport::Udp).unwrap()).unwrap();
        assert_eq!(r.response_code(), ResponseCode::FormErr);
    }

    /// The fast path says exactly what the full path says, for the queries it takes.
    #[test]
    fn fast_path_matches_full_path() {
        let text = format!("{}\n", config::DEMO).replace(
            "address = \"127.0.1.4:2525\"",
            "address = \"[fd00::4]:2525\"",
        );
        let c = config::Config::parse("t.toml", &text).unwrap();
        let (fast_cat, full_cat) = (
            Catalog::new(c.dns.as_ref().unwrap(), &c.silos),
            Catalog::new(c.dns.as_ref().unwrap(), &c.silos),
        );
        let mut taken = 0;
        for (qname, qtype) in [
            ("silo1.mailsilo.test.", RecordType::A),
            ("SiLo1.MailSilo.TEST.", RecordType::A),
            ("silo1.mailsilo.test.", RecordType::AAAA),
        ] {
            for edns in [None, Some((4096u16, 0u8)), Some((100, 0))] {
                for rd in [false, true] {
                    let mut m = Message::new();
                    m.set_id(777).set_recursion_desired(rd);
                    m.add_query(Query::query(Name::from_str(qname).unwrap(), qtype));
                    if let Some((size, version)) = edns {
                        let mut e = Edns::new();
                        e.set_max_payload(size).set_version(version);
                        m.set_edns(e);
                    }
                    let bytes = m.to_vec().unwrap();
                    let full =
                        Message::from_vec(&full_cat.full_answer(&bytes, Transport::Udp).unwrap())
                            .unwrap();
                    let fast = fast_cat
                        .fast_answer(&bytes, Transport::Udp)
                        .map(|b| Message::from_vec(&b).unwrap());
                    let Some(fast) = fast else { continue };
                    taken += 1;
                    assert_eq!(fast.header(), full.header(), "{qname} {qtype} {edns:?}");
                    assert_eq!(fast.queries(), full.queries());
                    assert_eq!(fast.answers(), full.answers());
                    assert_eq!(
                        fast.extensions()
                            .as_ref()
                            .map(|e| (e.max_payload(), e.version())),
                        full.extensions()
                            .as_ref()
                            .map(|e| (e.max_payload(), e.version()))
                    );
                }
            }
        }
        assert_eq!(taken, 18, "every one of these queries takes the fast path");
        // Not taken: another name, another type, EDNS version 1, options present.
        let mut m = Message::new();
        m.add_query(Query::query(
            Name::from_str("ns1.mailsilo.test.").unwrap(),
            RecordType::A,
        ));
        assert!(
            fast_cat
                .fast_answer(&m.to_vec().unwrap(), Transport::Udp)
                .is_none()
        );
    }

    proptest! {
        #[test]
        fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let cat = catalog("");
            if let Some(out) = cat.answer(&bytes, Transport::Udp) {
                prop_assert!(out.len() <= MAX_UDP);
                prop_assert!(out.len() >= 12);
                prop_assert_eq!(&out[..2], &bytes[..2], "the id is echoed");
            }
        }
    }
}
