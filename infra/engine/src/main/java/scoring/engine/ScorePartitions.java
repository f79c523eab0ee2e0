package scoring.engine;

import ai.onnxruntime.OnnxJavaType;
import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import ai.onnxruntime.TensorInfo;
import java.nio.Buffer;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.DoubleBuffer;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.nio.LongBuffer;
import java.util.HashMap;
import java.util.Iterator;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.Set;
import org.apache.spark.TaskContext;
import org.apache.spark.api.java.function.MapPartitionsFunction;
import org.apache.spark.broadcast.Broadcast;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;

/**
 * The function each task runs over its partition: gather rows into column buffers, one
 * ONNX Runtime call per {@code batchRows} rows, emit the kept columns plus the score.
 */
final class ScorePartitions implements MapPartitionsFunction<Row, Row> {
  private static final long serialVersionUID = 1L;

  private final Broadcast<byte[]> graph;
  private final String sha256;
  private final OnnxEngine.Layout layout;
  private final int keep;
  private final int skip;
  private final String scoreOutput;
  private final int scoreIndex;
  private final int batchRows;

  ScorePartitions(
      Broadcast<byte[]> graph,
      String sha256,
      OnnxEngine.Layout layout,
      int keep,
      int skip,
      String scoreOutput,
      int scoreIndex,
      int batchRows) {
    this.graph = graph;
    this.sha256 = sha256;
    this.layout = layout;
    this.keep = keep;
    this.skip = skip;
    this.scoreOutput = scoreOutput;
    this.scoreIndex = scoreIndex;
    this.batchRows = batchRows;
  }

  @Override
  public Iterator<Row> call(Iterator<Row> rows) {
    TaskContext task = TaskContext.get();
    int threads = task == null ? 1 : Math.max(1, task.cpus());
    // The broadcast is read only when this JVM has no session for the graph yet.
    OrtSession session = Sessions.get(sha256, threads, graph::value);
    return new Scored(rows, session);
  }

  /** Reads ahead one batch of rows, scores it, then hands the rows out one by one. */
  private final class Scored implements Iterator<Row> {
    private final Iterator<Row> input;
    private final OrtSession session;
    private final Feeds feeds;
    private final Row[] pending;
    private final double[] scores;
    private final boolean[] scored;
    private int count;
    private int next;

    Scored(Iterator<Row> input, OrtSession session) {
      this.input = input;
      this.session = session;
      this.feeds = new Feeds(layout, Math.max(batchRows, 2)); // room for a lone row's copy
      this.pending = new Row[batchRows];
      this.scores = new double[batchRows];
      this.scored = new boolean[batchRows];
    }

    @Override
    public boolean hasNext() {
      if (next < count) {
        return true;
      }
      fill();
      return count > 0;
    }

    @Override
    public Row next() {
      if (!hasNext()) {
        throw new NoSuchElementException();
      }
      Row row = pending[next];
      Object[] values = new Object[keep + 1];
      for (int i = 0; i < keep; i++) {
        values[i] = row.get(i);
      }
      values[keep] = scored[next] ? scores[next] : null;
      pending[next++] = null;
      return RowFactory.create(values);
    }

    private void fill() {
      count = 0;
      next = 0;
      feeds.reset();
      int valid = 0;
      while (count < batchRows && input.hasNext()) {
        Row row = input.next();
        boolean score = skip < 0 || row.isNullAt(skip);
        if (score) {
          feeds.put(valid++, row, keep);
        }
        pending[count] = row;
        scored[count++] = score;
      }
      if (valid == 0) {
        return;
      }
      if (valid == 1) {
        // One row goes through another ONNX Runtime kernel path (e.g. a matrix-vector
        // product), whose sums round differently: score it beside a copy of itself, as
        // the Python engine does, so its score does not depend on the batch around it.
        feeds.put(1, lastScored(), keep);
      }
      double[] out = run(Math.max(valid, 2));
      for (int i = 0, j = 0; i < count; i++) {
        if (scored[i]) {
          scores[i] = out[j++];
        }
      }
    }

    /** The one row of this batch that is scored. */
    private Row lastScored() {
      for (int i = count - 1; i >= 0; i--) {
        if (scored[i]) {
          return pending[i];
        }
      }
      throw new IllegalStateException("no row to score");
    }

    private double[] run(int rows) {
      Map<String, OnnxTensor> tensors = new HashMap<>();
      try {
        feeds.tensors(rows, tensors);
        try (OrtSession.Result result = session.run(tensors, Set.of(scoreOutput))) {
          return column((OnnxTensor) result.get(0), rows);
        }
      } catch (OrtException exc) {
        throw new IllegalStateException("ONNX Runtime failed to score a batch", exc);
      } finally {
        tensors.values().forEach(OnnxTensor::close);
      }
    }

    /** The score column as float64, picked like the Python engine's Scorer.predict. */
    private double[] column(OnnxTensor tensor, int rows) {
      TensorInfo info = tensor.getInfo();
      long[] shape = info.getShape();
      int width = shape.length == 2 ? (int) shape[1] : 1;
      int index = shape.length == 2 && scoreIndex >= 0 && width > 1 ? scoreIndex : 0;
      double[] out = new double[rows];
      switch (info.type) {
        case FLOAT: {
          FloatBuffer values = tensor.getFloatBuffer();
          for (int r = 0; r < rows; r++) {
            out[r] = values.get(r * width + index);
          }
          break;
        }
        case DOUBLE: {
          DoubleBuffer values = tensor.getDoubleBuffer();
          for (int r = 0; r < rows; r++) {
            out[r] = values.get(r * width + index);
          }
          break;
        }
        case INT64: {
          LongBuffer values = tensor.getLongBuffer();
          for (int r = 0; r < rows; r++) {
            out[r] = values.get(r * width + index);
          }
          break;
        }
        case INT32: {
          IntBuffer values = tensor.getIntBuffer();
          for (int r = 0; r < rows; r++) {
            out[r] = values.get(r * width + index);
          }
          break;
        }
        default:
          throw new IllegalStateException(
              "The graph's output " + scoreOutput + " is " + info.type + ", not a number.");
      }
      return out;
    }
  }

  /**
   * Reusable input buffers: one per graph input, sized for a whole batch and allocated once
   * per task. Direct buffers in native order are handed to ONNX Runtime without a copy.
   */
  private static final class Feeds {
    private final OnnxEngine.Layout layout;
    private final int width;
    private final Buffer[] buffers;
    private final String[][] strings;

    Feeds(OnnxEngine.Layout layout, int capacity) {
      this.layout = layout;
      int features = layout.types.length;
      this.width = layout.tensorInput != null ? features : 1;
      int inputs = layout.tensorInput != null ? 1 : features;
      this.buffers = new Buffer[inputs];
      this.strings = new String[inputs][];
      for (int i = 0; i < inputs; i++) {
        int size = capacity * width;
        switch (layout.types[i]) {
          case FLOAT:
            buffers[i] = direct(size * 4).asFloatBuffer();
            break;
          case DOUBLE:
            buffers[i] = direct(size * 8).asDoubleBuffer();
            break;
          case INT64:
            buffers[i] = direct(size * 8).asLongBuffer();
            break;
          case INT32:
            buffers[i] = direct(size * 4).asIntBuffer();
            break;
          default:
            strings[i] = new String[size];
        }
      }
    }

    private static ByteBuffer direct(int bytes) {
      return ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder());
    }

    /** Makes the whole capacity writable again (the last call narrowed it to its rows). */
    void reset() {
      for (Buffer buffer : buffers) {
        if (buffer != null) {
          buffer.clear();
        }
      }
    }

    /** Writes one row's features at position {@code row}. */
    void put(int row, Row values, int first) {
      int features = layout.types.length;
      for (int f = 0; f < features; f++) {
        int input = layout.tensorInput != null ? 0 : f;
        int at = row * width + (layout.tensorInput != null ? f : 0);
        int column = first + f;
        OnnxJavaType type = layout.types[f];
        if (type == OnnxJavaType.STRING) {
          // A missing string is fed as "" (scoring.model.features.MISSING_STRING).
          strings[input][at] = values.isNullAt(column) ? "" : values.getString(column);
          continue;
        }
        // A missing number is fed as NaN, then converted like numpy's astype.
        double value = values.isNullAt(column) ? Double.NaN : values.getDouble(column);
        switch (type) {
          case FLOAT:
            ((FloatBuffer) buffers[input]).put(at, (float) value);
            break;
          case DOUBLE:
            ((DoubleBuffer) buffers[input]).put(at, value);
            break;
          case INT64:
            ((LongBuffer) buffers[input]).put(at, toLong(value));
            break;
          default:
            ((IntBuffer) buffers[input]).put(at, toInt(value));
        }
      }
    }

    /** Tensors over the first {@code rows} rows of the buffers. */
    void tensors(int rows, Map<String, OnnxTensor> out) throws OrtException {
      OrtEnvironment env = OrtEnvironment.getEnvironment();
      long[] shape = {rows, width};
      for (int i = 0; i < buffers.length; i++) {
        String name = layout.tensorInput != null ? layout.tensorInput : layout.inputs[i];
        int size = rows * width;
        OnnxTensor tensor;
        switch (layout.types[i]) {
          case FLOAT:
            tensor = OnnxTensor.createTensor(env, (FloatBuffer) window(buffers[i], size), shape);
            break;
          case DOUBLE:
            tensor = OnnxTensor.createTensor(env, (DoubleBuffer) window(buffers[i], size), shape);
            break;
          case INT64:
            tensor = OnnxTensor.createTensor(env, (LongBuffer) window(buffers[i], size), shape);
            break;
          case INT32:
            tensor = OnnxTensor.createTensor(env, (IntBuffer) window(buffers[i], size), shape);
            break;
          default:
            String[] values = new String[size];
            System.arraycopy(strings[i], 0, values, 0, size);
            tensor = OnnxTensor.createTensor(env, values, shape);
        }
        out.put(name, tensor);
      }
    }

    private static Buffer window(Buffer buffer, int size) {
      return buffer.clear().limit(size);
    }
  }

  /** numpy's float64 -> int64 astype on x86-64: NaN and out-of-range give INT64_MIN. */
  static long toLong(double value) {
    return value >= -0x1p63 && value < 0x1p63 ? (long) value : Long.MIN_VALUE;
  }

  /** numpy's float64 -> int32 astype on x86-64: NaN and out-of-range give INT32_MIN. */
  static int toInt(double value) {
    return value > -2147483649.0 && value < 2147483648.0 ? (int) value : Integer.MIN_VALUE;
  }
}
