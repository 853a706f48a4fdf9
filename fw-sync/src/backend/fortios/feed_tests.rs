use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn change(name: &str, action: Action, have: &[&str], want: &[&str]) -> ObjectChange {
    let have: BTreeSet<IpAddr> = have.iter().map(|s| ip(s)).collect();
    let want: BTreeSet<IpAddr> = want.iter().map(|s| ip(s)).collect();
    ObjectChange {
        object: ObjectRef { kind: TargetKind::FortiosThreatFeed, name: name.into() },
        action,
        add: want.difference(&have).copied().collect(),
        remove: have.difference(&want).copied().collect(),
        desired: want,
    }
}

fn feed(entries: &[&str]) -> Feed {
    let mut f = Feed::default();
    f.apply(&Command::new("x", "add", entries.iter().map(|s| s.to_string()).collect()));
    f
}

fn cmd(name: &str, command: &'static str, entries: &[&str]) -> Command {
    Command::new(name, command, entries.iter().map(|s| s.to_string()).collect())
}

#[test]
fn small_changes_are_add_and_remove_with_removals_first() {
    let mut feeds = Feeds::default();
    feeds.feeds.insert("bhfw-a".into(), feed(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4/32"]));
    feeds.feeds.insert("bhfw-b".into(), feed(&["10.0.0.9", "10.0.0.8", "10.0.0.7"]));
    // 10.0.0.4 moves from a to b; a gains 10.0.0.5; b loses 10.0.0.9.
    let a = change("a", Action::Update, &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"], &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5"]);
    let b = change("b", Action::Update, &["10.0.0.7", "10.0.0.8", "10.0.0.9"], &["10.0.0.4", "10.0.0.7", "10.0.0.8"]);
    let moves = [ip("10.0.0.4")].into();
    let p = plan(&[&a, &b], &feeds, &moves, 100, |_| false).expect("plan");
    assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
    // The removal names the text FortiOS stores ("10.0.0.4/32").
    assert_eq!(p.first, [cmd("bhfw-a", "remove", &["10.0.0.4/32"]), cmd("bhfw-b", "remove", &["10.0.0.9"])]);
    assert_eq!(p.then, [cmd("bhfw-a", "add", &["10.0.0.5"]), cmd("bhfw-b", "add", &["10.0.0.4"])]);
}

#[test]
fn new_and_reshaped_feeds_are_snapshots_without_moving_addresses() {
    let mut feeds = Feeds::default();
    feeds.feeds.insert("bhfw-old".into(), feed(&["10.1.0.1", "10.1.0.2", "192.0.2.0/24"]));
    feeds.feeds.insert("bhfw-gone".into(), feed(&["10.1.0.7", "bad line"]));
    let new = change("new", Action::Create, &[], &["10.1.0.5", "10.1.0.7"]);
    // old has a CIDR an admin added: snapshot clears it.
    let old = change("old", Action::Update, &["10.1.0.1", "10.1.0.2"], &["10.1.0.1"]);
    let gone = change("gone", Action::Delete, &["10.1.0.7"], &[]);
    let moves = [ip("10.1.0.7")].into();
    let p = plan(&[&new, &old, &gone], &feeds, &moves, 100, |_| false).expect("plan");
    assert_eq!(p.create, ["bhfw-new"]);
    assert_eq!(p.delete, ["bhfw-gone"]);
    assert_eq!(p.first, [cmd("bhfw-new", "snapshot", &["10.1.0.5"]), cmd("bhfw-old", "snapshot", &["10.1.0.1"]), cmd("bhfw-gone", "remove", &["10.1.0.7", "bad line"])]);
    assert_eq!(p.then, [cmd("bhfw-new", "add", &["10.1.0.7"])]);
}

#[test]
fn refusals_come_before_any_request() {
    let mut feeds = Feeds::default();
    feeds.misfits.insert("bhfw-url".into());
    let big = change("big", Action::Create, &[], &["10.2.0.1", "10.2.0.2", "10.2.0.3"]);
    let e = plan(&[&big], &feeds, &BTreeSet::new(), 2, |_| false).expect_err("over the entry limit");
    assert!(e.0 == "fortios-threat-feed big" && e.1.contains("over the 2 entries"), "{e:?}");
    let url = change("url", Action::Update, &[], &["10.2.0.1"]);
    assert!(plan(&[&url], &feeds, &BTreeSet::new(), 9, |_| false).expect_err("misfit").1.contains("not an address feed"));
    let clash = change("web", Action::Create, &[], &["10.2.0.1"]);
    assert!(plan(&[&clash], &feeds, &BTreeSet::new(), 9, |n| n == "bhfw-web").expect_err("clash").1.contains("different names"));
    let long = change(&"a".repeat(31), Action::Create, &[], &[]);
    assert!(plan(&[&long], &feeds, &BTreeSet::new(), 9, |_| false).is_err());
}

#[test]
fn batches_keep_order_and_never_split_a_snapshot() {
    let cs = vec![cmd("a", "remove", &["1", "2", "3"]), cmd("b", "snapshot", &["4", "5"]), cmd("a", "add", &["6", "7", "8", "9"])];
    let b = batches(cs, 4);
    let shape: Vec<Vec<(&str, &str, usize)>> = b.iter().map(|r| r.iter().map(|c| (c.name.as_str(), c.command, c.entries.len())).collect()).collect();
    assert_eq!(shape, [vec![("a", "remove", 3)], vec![("b", "snapshot", 2), ("a", "add", 2)], vec![("a", "add", 2)]]);
    assert_eq!(batches(vec![cmd("a", "add", &["1"]), cmd("b", "remove", &["2"])], 10).len(), 1, "small changes share one request");
}

#[test]
fn a_feed_copy_follows_commands_as_fortios_does() {
    let mut f = feed(&["10.3.0.1", "10.3.0.1", "10.3.0.2/32", "10.3.0.2", "10.3.0.0/24"]);
    assert_eq!(f.ips.len(), 2);
    assert_eq!(f.extras, ["10.3.0.2", "10.3.0.0/24"], "a second spelling of an address is an extra");
    f.apply(&cmd("x", "remove", &["10.3.0.2/32", "10.3.0.0/24", "10.9.9.9"]));
    assert_eq!(f.ips.keys().copied().collect::<Vec<_>>(), [ip("10.3.0.1")]);
    f.apply(&cmd("x", "snapshot", &["10.3.0.5"]));
    assert_eq!((f.ips.keys().copied().collect::<Vec<_>>(), f.extras.len()), (vec![ip("10.3.0.5")], 0));
}

#[test]
fn one_feed_holds_both_families() {
    let mut f = feed(&["10.3.0.1", "fd00:3::1", "fd00:3::2/128", "fd00:3::/64"]);
    assert_eq!(f.ips.keys().map(ToString::to_string).collect::<Vec<_>>(), ["10.3.0.1", "fd00:3::1", "fd00:3::2"]);
    assert_eq!(f.extras, ["fd00:3::/64"], "an IPv6 network is no pod address");
    let mut feeds = Feeds::default();
    feeds.feeds.insert("bhfw-a".into(), feed(&["10.3.0.1", "fd00:3::1", "fd00:3::2/128"]));
    let a = change("a", Action::Update, &["10.3.0.1", "fd00:3::1", "fd00:3::2"], &["10.3.0.1", "fd00:3::1", "fd00:3::9"]);
    let p = plan(&[&a], &feeds, &BTreeSet::new(), 100, |_| false).expect("plan");
    // The removal names the stored text ("fd00:3::2/128").
    assert_eq!(p.first, [cmd("bhfw-a", "remove", &["fd00:3::2/128"])]);
    assert_eq!(p.then, [cmd("bhfw-a", "add", &["fd00:3::9"])]);
    f.apply(&cmd("x", "remove", &["fd00:3::2/128"]));
    assert!(!f.ips.contains_key(&ip("fd00:3::2")));
    let clash = change("fd00-3--1", Action::Create, &[], &[]);
    assert!(plan(&[&clash], &feeds, &BTreeSet::new(), 9, |_| false).expect_err("spelled like an address").1.contains("clashes"));
}
