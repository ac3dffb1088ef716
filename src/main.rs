use clap::Parser;

fn main() {
    let cli = kdscout::cli::Cli::parse();
    if let Err(e) = kdscout::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
