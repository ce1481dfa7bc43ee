fn main() {
    for f in std::env::args().skip(1) {
        let d = std::fs::read(&f).unwrap();
        vlapic_fuzz_targets::serde_restore::run(&d);
    }
}
