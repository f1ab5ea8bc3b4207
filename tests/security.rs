//! Authentication and ACLs end to end, on the real binary (2 shards, so refusals before a hand-off and ACLs on
//! the owner shard both run): mosquitto's password file and ACL file, refusal codes for 3.1.1 and 5.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{id_on_shard, publish, Broker, Raw};
use coremq::auth::PasswordHash;
use coremq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};

struct Setup {
    broker: Broker,
    _dir: tempfile::TempDir,
}

/// A broker with users alice (101 iterations), bob (100,000: verified off the shard loop) and an ACL.
fn start(acl: &str, extra_config: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let mut f = std::fs::File::create(&pw).unwrap();
    for (user, pass, iters) in [("alice", "wonder", 101), ("bob", "builder", 100_000)] {
        let h = PasswordHash::new_pbkdf2(pass.as_bytes(), iters).unwrap();
        writeln!(f, "{}", h.to_line(user)).unwrap();
    }
    let acl_path = dir.path().join("acl");
    std::fs::write(&acl_path, acl).unwrap();
    let conf = common::write_config(
        dir.path(),
        &format!(
            "password_file = {:?}\nacl_file = {:?}\n{extra_config}\n",
            pw.to_str().unwrap(),
            acl_path.to_str().unwrap()
        ),
    );
    let broker = Broker::start(&["--config", &conf]);
    Setup { broker, _dir: dir }
}

fn connect_as(
    b: &Broker,
    id: &str,
    user: Option<&str>,
    pass: Option<&str>,
    v: ProtocolVersion,
) -> (Raw, ReasonCode) {
    let mut c = Raw::connect_packet(id, true, 30, v);
    c.username = user.map(Into::into);
    c.password = pass.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()));
    let mut r = Raw::connect_tcp(b.addr, v);
    r.send(&Packet::Connect(Box::new(c)));
    match r.recv() {
        Some(Packet::ConnAck(a)) => (r, a.reason),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

const ACL: &str = "\
# alice may use her own tree and read news
user alice
topic readwrite alice/#
topic read news/#

user bob
topic readwrite bob/#
topic write news/#

pattern readwrite clients/%c/#
";

#[test]
fn passwords_are_checked_and_refusals_carry_the_right_code() {
    let s = start(ACL, "");
    let b = &s.broker;
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for shard in 0..2 {
            let id = id_on_shard("pw", shard, 2);
            let (_c, r) = connect_as(b, &id, Some("alice"), Some("wonder"), v);
            assert_eq!(r, ReasonCode::Success, "{v:?} shard {shard}");
            // The costly hash goes to the verifier threads and comes back.
            let (_c, r) = connect_as(b, &format!("{id}-b"), Some("bob"), Some("builder"), v);
            assert_eq!(r, ReasonCode::Success, "{v:?} bob");
        }
        let (_c, r) = connect_as(b, "x1", Some("alice"), Some("wrong"), v);
        assert_eq!(r, ReasonCode::BadUserNameOrPassword, "{v:?} wrong password");
        let (_c, r) = connect_as(b, "x2", Some("bob"), Some("wrong"), v);
        assert_eq!(
            r,
            ReasonCode::BadUserNameOrPassword,
            "{v:?} wrong costly password"
        );
        let (_c, r) = connect_as(b, "x3", Some("mallory"), Some("x"), v);
        assert_eq!(r, ReasonCode::BadUserNameOrPassword, "{v:?} unknown user");
        let (_c, r) = connect_as(b, "x4", None, None, v);
        assert_eq!(r, ReasonCode::NotAuthorized, "{v:?} anonymous");
    }
    // A refused client changed nothing for the others.
    let (mut c, r) = connect_as(
        b,
        "still",
        Some("alice"),
        Some("wonder"),
        ProtocolVersion::V5,
    );
    assert_eq!(r, ReasonCode::Success);
    assert_eq!(
        c.subscribe(1, "alice/x", QoS::AtLeastOnce),
        vec![ReasonCode::GrantedQoS1]
    );
}

#[test]
fn acl_governs_publish_subscribe_and_delivery() {
    let s = start(ACL, "");
    let b = &s.broker;
    let v5 = ProtocolVersion::V5;
    // Subscribers on both shards: the ACL is applied on the shard that owns the session.
    let (mut alice, _) = connect_as(
        b,
        &id_on_shard("alice", 0, 2),
        Some("alice"),
        Some("wonder"),
        v5,
    );
    let (mut alice3, _) = connect_as(
        b,
        &id_on_shard("alice3", 1, 2),
        Some("alice"),
        Some("wonder"),
        ProtocolVersion::V3_1_1,
    );
    let (mut bob, _) = connect_as(b, "bob-1", Some("bob"), Some("builder"), v5);
    assert_eq!(
        alice.subscribe(1, "news/#", QoS::AtLeastOnce),
        vec![ReasonCode::GrantedQoS1]
    );
    assert_eq!(
        alice.subscribe(2, "bob/#", QoS::AtLeastOnce),
        vec![ReasonCode::NotAuthorized]
    );
    assert_eq!(
        alice3.subscribe(1, "news/#", QoS::AtLeastOnce),
        vec![ReasonCode::GrantedQoS1]
    );
    assert_eq!(
        alice3.subscribe(2, "bob/#", QoS::AtLeastOnce),
        vec![ReasonCode::UnspecifiedError]
    );
    // bob may write news but not read it; alice may read it.
    bob.publish("news/today", QoS::AtLeastOnce, 7, b"sun", false, false);
    match bob.recv() {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, ReasonCode::Success),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(&publish(alice.recv()).payload[..], b"sun");
    assert_eq!(&publish(alice3.recv()).payload[..], b"sun");
    // alice may not write news: v5 is told 0x87, 3.1.1 gets a plain PUBACK and the message goes nowhere.
    alice.publish("news/fake", QoS::AtLeastOnce, 8, b"fake", false, false);
    match alice.recv() {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, ReasonCode::NotAuthorized),
        other => panic!("expected PUBACK 0x87, got {other:?}"),
    }
    alice3.publish("news/fake3", QoS::ExactlyOnce, 9, b"fake3", false, false);
    match alice3.recv() {
        Some(Packet::PubRec(a)) => assert_eq!(a.packet_id, 9),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // Nobody publishes under $SYS.
    bob.publish(
        "$SYS/broker/uptime",
        QoS::AtLeastOnce,
        10,
        b"0",
        false,
        false,
    );
    match bob.recv() {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, ReasonCode::NotAuthorized),
        other => panic!("expected PUBACK 0x87, got {other:?}"),
    }
    // Patterns: %c is the client id.
    let (mut carol, _) = connect_as(b, "carol-id", Some("alice"), Some("wonder"), v5);
    assert_eq!(
        carol.subscribe(1, "clients/carol-id/#", QoS::AtMostOnce),
        vec![ReasonCode::Success]
    );
    assert_eq!(
        carol.subscribe(2, "clients/other/#", QoS::AtMostOnce),
        vec![ReasonCode::NotAuthorized]
    );
    // A retained message is delivered only where reading is allowed.
    bob.publish("bob/state", QoS::AtLeastOnce, 11, b"r", true, false);
    assert!(matches!(bob.recv(), Some(Packet::PubAck(_))));
    assert_eq!(
        alice.subscribe(3, "#", QoS::AtMostOnce),
        vec![ReasonCode::Success]
    );
    bob.publish("news/later", QoS::AtMostOnce, 0, b"later", false, false);
    alice.set_timeout(Duration::from_secs(2));
    let got: Vec<String> = std::iter::from_fn(|| match alice.recv() {
        Some(Packet::Publish(p)) => Some(p.topic.to_string()),
        _ => None,
    })
    .take(3)
    .collect();
    assert!(got.contains(&"news/later".to_string()), "{got:?}");
    assert!(
        !got.iter()
            .any(|t| t.starts_with("bob/") || t == "news/fake" || t == "news/fake3"),
        "alice read what the ACL forbids: {got:?}"
    );
}

#[test]
fn a_will_the_client_may_not_publish_refuses_the_connect() {
    let s = start(ACL, "");
    let mut c = Raw::connect_packet("willy", true, 30, ProtocolVersion::V5);
    c.username = Some("alice".into());
    c.password = Some(bytes::Bytes::from_static(b"wonder"));
    c.will = Some(coremq::codec::Will {
        topic: "bob/dead".into(),
        payload: bytes::Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: None,
    });
    let mut r = Raw::connect_tcp(s.broker.addr, ProtocolVersion::V5);
    r.send(&Packet::Connect(Box::new(c)));
    match r.recv() {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason, ReasonCode::NotAuthorized),
        other => panic!("expected CONNACK 0x87, got {other:?}"),
    }
}

#[test]
fn a_bad_password_or_acl_file_refuses_the_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let good = PasswordHash::new_pbkdf2(b"pw", 101)
        .unwrap()
        .to_line("alice");
    std::fs::write(&pw, format!("{good}\nbob:$2y$10$whatever\n")).unwrap();
    let conf = common::write_config(
        dir.path(),
        &format!("password_file = {:?}\n", pw.to_str().unwrap()),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coremq"))
        .args(["--config", &conf, "--listen", "127.0.0.1:0"])
        .args(["--data-dir", dir.path().join("d").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("passwd:2"), "{err}");
}

#[test]
fn sighup_reloads_the_password_file_and_a_bad_one_keeps_the_old() {
    let s = start(ACL, "");
    let b = &s.broker;
    let v = ProtocolVersion::V5;
    let (mut kept, r) = connect_as(b, "kept", Some("alice"), Some("wonder"), v);
    assert_eq!(r, ReasonCode::Success);
    let (_c, r) = connect_as(b, "c1", Some("carol"), Some("secret"), v);
    assert_eq!(
        r,
        ReasonCode::BadUserNameOrPassword,
        "carol is not in the file yet"
    );
    // Add carol and reload.
    let pw = s._dir.path().join("passwd");
    let mut text = std::fs::read_to_string(&pw).unwrap();
    text.push_str(
        &PasswordHash::new_pbkdf2(b"secret", 101)
            .unwrap()
            .to_line("carol"),
    );
    text.push('\n');
    std::fs::write(&pw, &text).unwrap();
    let hup = |b: &Broker| unsafe { libc::kill(b.pid() as i32, libc::SIGHUP) };
    hup(b);
    let admitted = (0..50).any(|i| {
        std::thread::sleep(Duration::from_millis(100));
        connect_as(b, &format!("c2-{i}"), Some("carol"), Some("secret"), v).1 == ReasonCode::Success
    });
    assert!(admitted, "carol admitted after SIGHUP");
    // A file that does not parse keeps the previous one: carol still gets in, nobody new does.
    std::fs::write(&pw, "carol:$2y$broken\n").unwrap();
    hup(b);
    std::thread::sleep(Duration::from_millis(2500));
    let (_c, r) = connect_as(b, "c3", Some("carol"), Some("secret"), v);
    assert_eq!(r, ReasonCode::Success, "the old file stays in force");
    // The connection from before every reload is still served.
    assert_eq!(
        kept.subscribe(1, "alice/x", QoS::AtMostOnce),
        vec![ReasonCode::Success]
    );
}
