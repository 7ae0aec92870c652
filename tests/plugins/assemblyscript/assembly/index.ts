// Sluice test plugin written against the public AssemblyScript Proxy-Wasm SDK
// (@solo-io/proxy-runtime 0.1.8), used unmodified. See ../README.md for what it does and how
// Sluice must be configured to run it (root_id: sluice_as).

// The SDK's module of exported entry points: proxy_abi_version_0_2_0, malloc, proxy_on_*.
export * from "@solo-io/proxy-runtime/proxy";

import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  GrpcStatusValues,
  LogLevelValues,
  HeaderPair,
  Headers,
  log,
  send_local_response,
  stream_context,
} from "@solo-io/proxy-runtime";
// Not re-exported by the SDK's index, but public in its runtime module.
import { get_buffer_bytes, BufferTypeValues } from "@solo-io/proxy-runtime/runtime";

/** The root id this plugin answers to; the Sluice config must say `root_id: sluice_as`. */
const ROOT_ID = "sluice_as";

class SluiceAsRoot extends RootContext {
  /** The plugin configuration buffer, decoded as UTF-8 ("" when there is none). */
  config: string = "";

  constructor(context_id: u32) {
    super(context_id);
  }

  createContext(context_id: u32): Context {
    return new SluiceAsStream(context_id, this);
  }

  // Replaces the SDK's default onConfigure: that one reads the buffer through CHECK_RESULT
  // (which aborts the module on an empty configuration) and hands the host a bad pointer for the
  // returned size. get_buffer_bytes reads the whole buffer and gives an empty one on any error.
  onConfigure(configuration_size: u32): bool {
    let text = "";
    if (configuration_size > 0) {
      const raw = get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size);
      text = String.UTF8.decode(raw);
    }
    this.config = text;
    return text != "fail";
  }
}

/** True if the request has a header with this (lower-case) name, whatever its value. */
function hasRequestHeader(name: string): bool {
  const pairs: Headers = stream_context.headers.request.get_headers();
  for (let i = 0; i < pairs.length; i++) {
    const key = String.UTF8.decode(pairs[i].key);
    if (key.toLowerCase() == name) {
      return true;
    }
  }
  return false;
}

class SluiceAsStream extends Context {
  config: string;

  constructor(context_id: u32, root_context: SluiceAsRoot) {
    super(context_id, root_context);
    this.config = root_context.config;
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const request = stream_context.headers.request;
    const path = request.get(":path");
    request.add("x-as-config", this.config.length > 0 ? this.config : "none");
    request.add("x-as-path", path);
    log(LogLevelValues.info, "as-plugin saw " + path);

    if (hasRequestHeader("x-as-deny")) {
      const extra: Headers = [];
      extra.push(new HeaderPair(String.UTF8.encode("x-as-denied"), String.UTF8.encode("yes")));
      send_local_response(
        401,
        "denied by assemblyscript",
        String.UTF8.encode("denied by assemblyscript"),
        extra,
        GrpcStatusValues.InvalidCode,
      );
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-plugin", "sluice-as");
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => {
  return new SluiceAsRoot(context_id);
}, ROOT_ID);
