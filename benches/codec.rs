fn main() { let _ = criterion::black_box(0); }
