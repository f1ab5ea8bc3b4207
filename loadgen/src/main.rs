fn main() {
    eprintln!("coremq-loadgen: not built yet (see issue: coremq-loadgen)");
    std::process::exit(2);
}
