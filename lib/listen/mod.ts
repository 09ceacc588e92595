/** Local listeners: binding, accepting TCP, sorting UDP into sessions. */
export { bindEach, bindForwards, bindPort, closeBinding, readyFacts } from "./bind.ts";
export type { BindOptions, ListenerSet, PortBinding } from "./bind.ts";
export { TcpListener } from "./tcp.ts";
export type { BindAddress, ConnectionHandler } from "./tcp.ts";
export { UdpListener } from "./udp.ts";
export type { SessionHandler, UdpListenerOptions, UdpSession } from "./udp.ts";
