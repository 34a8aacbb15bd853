fn main() {
    println!("start_server {}", env!("CARGO_PKG_VERSION"));
}
