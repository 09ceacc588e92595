/**
 * The test cluster's pod sysctls (scripts/cluster/shim/sysctls.ts): which ones the kubelet shim
 * admits, as a table.
 */
import { assertEquals } from "./assert.ts";
import { sysctlRejection } from "../scripts/cluster/shim/sysctls.ts";

Deno.test("kubelet shim: safe net.ipv4 sysctls are admitted, any other fails the pod as a kubelet does", () => {
  const cases: [string, boolean][] = [
    ["net.ipv4.ip_local_port_range", true],
    ["net/ipv4/ip_local_port_range", true],
    ["net.ipv4.tcp_keepalive_time", true],
    ["net.core.somaxconn", false],
    ["net.ipv4.tcp_tw_reuse", false],
    ["kernel.shm_rmid_forced", false],
  ];
  for (const [name, admitted] of cases) {
    const rejection = sysctlRejection([{ name, value: "1" }]);
    assertEquals(rejection === undefined, admitted, name);
    if (rejection) {
      assertEquals(rejection, {
        reason: "SysctlForbidden",
        message: `Pod forbidden sysctl: "${name}" not allowlisted`,
      });
    }
  }
  assertEquals(sysctlRejection([]), undefined);
});
