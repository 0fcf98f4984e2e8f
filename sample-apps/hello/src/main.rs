//! A plain WASI command: prints a greeting with its arguments and exits 0.
//!
//! Nothing Wedge-specific: any `wasm32-wasip2` binary runs as a pod container like this one.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = std::env::var("NAME").unwrap_or_else(|_| "Wedge".to_owned());
    println!("Hello from {name}!");
    if !args.is_empty() {
        println!("args: {}", args.join(" "));
    }
    eprintln!("hello: done");
}
