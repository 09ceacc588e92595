/**
 * The API calls relay makes, by group, named as client-node names them so that the model
 * types (`import type`, free at run time) and the call sites read the same.
 */
import type {
  CoreV1EventList,
  V1DaemonSet,
  V1Deployment,
  V1Job,
  V1JobList,
  V1Namespace,
  V1Pod,
  V1PodList,
  V1ReplicaSet,
  V1SelfSubjectAccessReview,
  V1SelfSubjectRulesReview,
  V1Service,
  V1StatefulSet,
  V1Status,
} from "@kubernetes/client-node";
import type { KubeApi } from "./api.ts";

/** Names one object. */
export interface NamedRequest {
  name: string;
  namespace: string;
}

/** Lists a namespace's objects. */
export interface ListRequest {
  namespace: string;
  labelSelector?: string;
  fieldSelector?: string;
}

/** Creates an object in a namespace. */
export interface CreateRequest<T> {
  namespace: string;
  body: T;
}

const ns = (namespace: string) => `/namespaces/${encodeURIComponent(namespace)}`;
const named = (kind: string, r: NamedRequest) =>
  `${ns(r.namespace)}/${kind}/${encodeURIComponent(r.name)}`;

/** The core group's calls. */
export function coreApi(api: KubeApi) {
  const base = "/api/v1";
  const list = (r: ListRequest) => ({
    query: { labelSelector: r.labelSelector, fieldSelector: r.fieldSelector },
  });
  return {
    readNamespacedPod: (r: NamedRequest) => api.request<V1Pod>("GET", base + named("pods", r)),
    listNamespacedPod: (r: ListRequest) =>
      api.request<V1PodList>("GET", `${base}${ns(r.namespace)}/pods`, list(r)),
    readNamespacedService: (r: NamedRequest) =>
      api.request<V1Service>("GET", base + named("services", r)),
    createNamespacedService: (r: CreateRequest<V1Service>) =>
      api.request<V1Service>("POST", `${base}${ns(r.namespace)}/services`, { body: r.body }),
    /** A JSON patch (RFC 6902) of the pod's ephemeral containers. */
    patchNamespacedPodEphemeralcontainers: (r: NamedRequest & { body: unknown[] }) =>
      api.request<V1Pod>("PATCH", `${base}${named("pods", r)}/ephemeralcontainers`, {
        body: r.body,
        contentType: "application/json-patch+json",
      }),
    listNamespacedEvent: (r: ListRequest) =>
      api.request<CoreV1EventList>("GET", `${base}${ns(r.namespace)}/events`, list(r)),
    createNamespace: (r: { body: V1Namespace }) =>
      api.request<V1Namespace>("POST", `${base}/namespaces`, { body: r.body }),
    deleteNamespace: (r: { name: string }) =>
      api.request<V1Status>("DELETE", `${base}/namespaces/${encodeURIComponent(r.name)}`),
  };
}

/** The apps group's calls. */
export function appsApi(api: KubeApi) {
  const base = "/apis/apps/v1";
  return {
    readNamespacedDeployment: (r: NamedRequest) =>
      api.request<V1Deployment>("GET", base + named("deployments", r)),
    readNamespacedStatefulSet: (r: NamedRequest) =>
      api.request<V1StatefulSet>("GET", base + named("statefulsets", r)),
    readNamespacedDaemonSet: (r: NamedRequest) =>
      api.request<V1DaemonSet>("GET", base + named("daemonsets", r)),
    readNamespacedReplicaSet: (r: NamedRequest) =>
      api.request<V1ReplicaSet>("GET", base + named("replicasets", r)),
    createNamespacedDeployment: (r: CreateRequest<V1Deployment>) =>
      api.request<V1Deployment>("POST", `${base}${ns(r.namespace)}/deployments`, { body: r.body }),
  };
}

/** The batch group's calls. */
export function batchApi(api: KubeApi) {
  const base = "/apis/batch/v1";
  return {
    createNamespacedJob: (r: CreateRequest<V1Job>) =>
      api.request<V1Job>("POST", `${base}${ns(r.namespace)}/jobs`, { body: r.body }),
    deleteNamespacedJob: (r: NamedRequest & { propagationPolicy?: string }) =>
      api.request<V1Status>("DELETE", base + named("jobs", r), {
        query: { propagationPolicy: r.propagationPolicy },
      }),
    listNamespacedJob: (r: ListRequest) =>
      api.request<V1JobList>("GET", `${base}${ns(r.namespace)}/jobs`, {
        query: { labelSelector: r.labelSelector },
      }),
  };
}

/** The authorization group's calls: may I do this, and what may I do in a namespace? */
export function authorizationApi(api: KubeApi) {
  return {
    createSelfSubjectRulesReview: (r: { body: V1SelfSubjectRulesReview }) =>
      api.request<V1SelfSubjectRulesReview>(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        { body: r.body },
      ),
    createSelfSubjectAccessReview: (r: { body: V1SelfSubjectAccessReview }) =>
      api.request<V1SelfSubjectAccessReview>(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        { body: r.body },
      ),
  };
}

export type CoreApi = ReturnType<typeof coreApi>;
export type AppsApi = ReturnType<typeof appsApi>;
export type BatchApi = ReturnType<typeof batchApi>;
export type AuthorizationApi = ReturnType<typeof authorizationApi>;
