/** The parts of `relay --help` that commander does not generate. */

/** The one-line usage after `Usage: relay`. */
export const USAGE = "[flags] TARGET [local:]remote[@tcp|@udp]... [TARGET PORT...]...";

/** What relay is, above the flag list. */
// One paragraph a line: commander wraps them to the terminal's width.
export const DESCRIPTION = [
  "Forward local ports to anything reachable from inside a Kubernetes cluster: pods, " +
  "Services and workloads (like kubectl port-forward), and also in-cluster hostnames and " +
  "IPs, over TCP and UDP, through a small agent pod. Press Ctrl-C to stop; the agent is " +
  "cleaned up.",
  "TARGET is pod/NAME (or just NAME), svc/NAME, deploy/NAME, sts/NAME, ds/NAME, rs/NAME " +
  "(kubectl's spellings such as service/NAME or deployment.apps/NAME work too), " +
  "host/HOSTNAME (resolved inside the cluster) or ip/ADDRESS. After the first target, " +
  "write pods as pod/NAME.",
  "PORT is [local:]remote[@tcp|@udp]: remote is a number or a named port of the target; " +
  "local defaults to remote, and an empty local (:8080) picks a free port, which is " +
  "printed. A named port uses its declared protocol; a number uses the protocol the " +
  "target declares for it (a UDP-only Service port needs no @udp), else tcp. A number " +
  "declared for both TCP and UDP (like kube-dns 53) must say which: 53@tcp or 53@udp " +
  "(kubectl would silently take TCP).",
  "UDP: each local source address is a session with its own socket at the agent; " +
  "datagrams cross whole (up to 65,507 bytes), an overloaded session drops (and, with -v, " +
  "counts) datagrams rather than slow others, and a session ends after " +
  "--udp-idle-timeout without datagrams. -L takes @udp too: -L 5353:kube-dns.kube-system:53@udp.",
].join("\n\n");

/** Examples, in kubectl's style, printed after the flag list. */
export const EXAMPLES = `
Examples:
  # Listen on 6379 locally, forwarding to a hostname resolved inside the cluster
  relay host/redis.example 6379

  # Forward two ports of an in-cluster IP
  relay ip/198.18.3.4 5000 6000

  # Forward local 8080 to the Service port named http
  relay svc/my-service 8080:http

  # Pick a free local port for a Deployment's 8080 (the port is printed)
  relay -n kube-system deploy/x :8080

  # Several targets in one command, including UDP
  relay pod/p 5353:53 sts/s 9000
  relay svc/kube-dns 5353:53@udp ip/198.18.0.7 9000@udp 9000@tcp

  # Listen on every interface, or on 127.0.0.1 only (the default, localhost, adds ::1)
  relay --address 0.0.0.0 pod/my-pod 5353:53
  relay -l 127.0.0.1 svc/web 8080:80

  # Targets from a file: one "[-n NS] [-l ADDRESS] TARGET PORT..." a line, # and // comments
  relay -f targets.txt
  relay -f - < targets.txt

  # mirrord style: local 8080 to py-serv:80 and 9090 to 10.1.2.3:90, from the agent pod
  relay -L 8080:py-serv:80 -L 9090:10.1.2.3:90

  # The same, leaving from inside a pod of deploy/web (its IP, its resolver)
  relay --target deploy/web -L 8080:payments-api:443

  # Reverse: connections to port 9000 of a pod of deploy/web come to local 9000, 80 to 8080
  relay --target deploy/web -R 9000 -R 80:8080

  # The app's own port 80: mirrored by default; stolen, or only the requests a filter matches
  relay --target svc/web -R 80:8080 --steal
  relay --target svc/web -R 80:8080 --http-header-filter '^x-dev: me$'

  # A SOCKS5 and HTTP proxy into the cluster on 127.0.0.1:1080 (see relay proxy --help)
  relay proxy -n shop
  curl --socks5-hostname 127.0.0.1:1080 http://payments:8080/

  # Customize the agent pod with a merge patch (JSON or YAML)
  relay --patch '{"spec":{"nodeSelector":{"disk":"ssd"}}}' svc/web 8080:80
  relay --patch-file patch.yaml svc/web 8080:80

  # As a kubectl plugin (install the binary as kubectl-relay)
  kubectl relay service/my-service 8080:80

  # Shell completion (bash needs the bash-completion package); fish: relay completion fish | source
  source <(relay completion bash)

Exit status: 0 when stopped by a signal, 1 on a runtime failure, 2 on bad input.
`;
