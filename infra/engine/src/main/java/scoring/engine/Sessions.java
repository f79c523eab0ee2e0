package scoring.engine;

import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Supplier;

/**
 * One ONNX Runtime session per executor JVM per graph and thread count.
 *
 * <p>Keyed by the graph's SHA-256, never by a model name or alias, so a cached session can
 * only serve the graph it was built from. The bytes are asked for only on a miss (on an
 * executor that reads the broadcast once) and are checked against the expected checksum
 * before use, like the Python engine's {@code cached_scorer}.
 */
final class Sessions {
  private static final Map<String, OrtSession> CACHE = new ConcurrentHashMap<>();
  // ONNX Runtime's graph loading and optimisation recurse natively; on the 1 MB stack of a
  // py4j or task thread that overflowed (a SIGSEGV the JVM cannot survive), so sessions are
  // built on a thread of their own with room to spare.
  private static final long LOADER_STACK_BYTES = 256L << 20;

  private Sessions() {}

  static OrtSession get(String sha256, int threads, Supplier<byte[]> graph) {
    return CACHE.computeIfAbsent(sha256 + "/" + threads, key -> build(sha256, threads, graph));
  }

  private static OrtSession build(String sha256, int threads, Supplier<byte[]> graph) {
    byte[] bytes = graph.get();
    String actual = sha256(bytes);
    if (!actual.equals(sha256)) {
      throw new IllegalStateException(
          "The shipped ONNX graph has SHA-256 " + actual + ", the contract says " + sha256
              + ": the broadcast is corrupt or belongs to another model. Re-run the job.");
    }
    OrtSession[] built = new OrtSession[1];
    RuntimeException[] failed = new RuntimeException[1];
    Thread loader =
        new Thread(
            null,
            () -> {
              try {
                built[0] = create(sha256, threads, bytes);
              } catch (RuntimeException exc) {
                failed[0] = exc;
              }
            },
            "onnx-session-loader",
            LOADER_STACK_BYTES);
    loader.start();
    try {
      loader.join();
    } catch (InterruptedException exc) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException("Interrupted while loading the graph " + sha256, exc);
    }
    if (failed[0] != null) {
      throw failed[0];
    }
    return built[0];
  }

  private static OrtSession create(String sha256, int threads, byte[] bytes) {
    try {
      OrtEnvironment env = OrtEnvironment.getEnvironment();
      OrtSession.SessionOptions options = new OrtSession.SessionOptions();
      // The same settings as the Python engine (scoring.model.artifact.Scorer): one task's
      // CPUs for the kernels, sequential nodes. Equal settings give equal kernels, and so
      // equal scores bit for bit.
      options.setIntraOpNumThreads(threads);
      options.setInterOpNumThreads(1);
      options.setExecutionMode(OrtSession.SessionOptions.ExecutionMode.SEQUENTIAL);
      options.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT);
      return env.createSession(bytes, options);
    } catch (OrtException exc) {
      throw new IllegalStateException("ONNX Runtime cannot load the graph " + sha256, exc);
    }
  }

  static String sha256(byte[] bytes) {
    try {
      return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(bytes));
    } catch (NoSuchAlgorithmException exc) {
      throw new IllegalStateException(exc);
    }
  }
}
