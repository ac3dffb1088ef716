use clap::Parser;

fn main() {
    let cli = match kdscout::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help, version or a usage error: print it (a closed pipe is ignored) and exit with
            // clap's code: 2 for usage errors, 0 for --help and --version.
            let _ = e.print();
            std::process::exit(e.exit_code());
        }
    };
    if let Err(e) = kdscout::cli::run(cli) {
        kdscout::errln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
