fn main() {
    println!("kdscout {}", env!("CARGO_PKG_VERSION"));
}
